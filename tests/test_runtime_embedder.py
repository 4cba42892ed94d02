"""Embedder on a tiny ONNX model: equals a numpy reference, equals preprocess + embed_pixels, survives hostile
folders, is thread-safe, and picks / reports its backend clearly."""
from __future__ import annotations

import logging
import threading

import numpy as np
import pytest
from PIL import Image

from runtime_fixtures import (
    TINY_DIM,
    TINY_SIZE,
    build_hostile_folder,
    make_tiny_export,
    pacs_sample,
    tiny_reference,
)
from tki_sdk.runtime import Embedder, ImageLoadError, ModelMetadata, Preprocessor


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d, w = make_tiny_export(tmp_path_factory.mktemp("tiny") / "export")
    return d, w


@pytest.fixture(scope="module")
def emb(tiny):
    return Embedder(tiny[0], threads=1)


def test_embed_pixels_equals_numpy_reference(emb, tiny):
    x = np.random.default_rng(0).standard_normal((7, 3, TINY_SIZE, TINY_SIZE)).astype(np.float32)
    got = emb.embed_pixels(x)
    assert got.shape == (7, TINY_DIM) and got.dtype == np.float32
    np.testing.assert_allclose(got, tiny_reference(x, tiny[1]), rtol=0, atol=2e-6)
    np.testing.assert_allclose(emb.embed_pixels(x[:1]), got[:1], atol=1e-6)
    assert emb.embed_pixels(x[:0]).shape == (0, TINY_DIM)
    with pytest.raises(ValueError, match=r"expects \[N, 3, 32, 32\]"):
        emb.embed_pixels(x[:, :, :16])


def test_reports_backend_and_fingerprint(tiny, caplog):
    with caplog.at_level(logging.INFO, logger="tki_sdk.runtime.engine.embedder"):
        e = Embedder(tiny[0], threads=1)
    assert e.backend == "onnxruntime" and e.provider == "CPUExecutionProvider" and e.precision == "fp32"
    assert "CPUExecutionProvider" in caplog.text
    assert e.model_fingerprint == ModelMetadata.load(tiny[0]).fingerprint()
    assert e.embedding_dim == TINY_DIM and e.input_size == (TINY_SIZE, TINY_SIZE)


def test_embed_images_equals_preprocess_then_embed_pixels(emb, pacs_dir):
    files = pacs_sample(pacs_dir, per_class=2)
    items = [files[0], str(files[1]), files[2].read_bytes(), Image.open(files[3])] + files[4:]
    res = emb.embed_images(items, batch_size=3, workers=2)
    assert res.errors == [] and list(res.indices) == list(range(len(items)))
    pre = Preprocessor.from_metadata(emb.metadata)
    expected = emb.embed_pixels(np.stack([pre(Image.open(f)) for f in files]))
    np.testing.assert_allclose(res.embeddings, expected, rtol=0, atol=1e-6)
    assert res.stats["images"] == len(items) and res.stats["infer_s"] > 0
    np.testing.assert_allclose(emb.embed_image(files[5]), expected[5], atol=1e-6)


def test_hostile_folder_embeds_every_loadable_image_and_names_every_bad_file(emb, pacs_dir, tmp_path):
    folder = tmp_path / "hostile"
    expect = build_hostile_folder(folder, pacs_sample(pacs_dir, per_class=1))
    items = sorted(folder.iterdir())
    res = emb.embed_images(items, batch_size=4, workers=2)
    bad = {p.name: reason for p, reason in res.errors}
    assert set(bad) == {n for n, r in expect.items() if r is not None}
    for name, reason in bad.items():
        assert expect[name] in reason, (name, reason)
    good = [items[i] for i in res.indices]
    assert {p.name for p in good} == {n for n, r in expect.items() if r is None}
    # each good file is embedded exactly as decoding it with Pillow and preprocessing gives
    pre = Preprocessor.from_metadata(emb.metadata)
    ref = emb.embed_pixels(np.stack([pre(Image.open(p)) for p in good]))
    np.testing.assert_allclose(res.embeddings, ref, rtol=0, atol=1e-6)
    # a failing item keeps its error and does not shift the others
    assert len(res.indices) + len(res.errors) == len(items)


def test_concurrent_calls_equal_serial(emb, pacs_dir):
    files = pacs_sample(pacs_dir, per_class=2)
    serial = emb.embed_images(files, batch_size=4).embeddings
    x = np.random.default_rng(1).standard_normal((5, 3, TINY_SIZE, TINY_SIZE)).astype(np.float32)
    serial_px = emb.embed_pixels(x)
    results: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            order = files[i % 3 :] + files[: i % 3]
            r = emb.embed_images(order, batch_size=3, workers=2)
            back = np.empty_like(r.embeddings)
            back[[(j + i % 3) % len(files) for j in range(len(files))]] = r.embeddings
            results[i] = (back, emb.embed_pixels(x))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for back, px in results.values():
        np.testing.assert_allclose(back, serial, atol=1e-6)
        np.testing.assert_allclose(px, serial_px, atol=1e-6)


def test_fixed_batch_model_is_chunked_and_padded(tmp_path):
    d, w = make_tiny_export(tmp_path / "fixed", fixed_batch=4, seed=3)
    e = Embedder(d, threads=1)
    x = np.random.default_rng(2).standard_normal((10, 3, TINY_SIZE, TINY_SIZE)).astype(np.float32)
    np.testing.assert_allclose(e.embed_pixels(x), tiny_reference(x, w), atol=2e-6)


def test_artifact_selection_and_clear_errors(tmp_path):
    d, _ = make_tiny_export(
        tmp_path / "exp",
        extra_artifacts={"int8": {"file": "model.int8.onnx"}, "tensorrt_fp16": {"file": "model.plan"}},
    )
    with pytest.raises(ValueError, match="available: fp32, int8, tensorrt_fp16"):
        Embedder(d, precision="fp64")
    with pytest.raises(FileNotFoundError, match="model.int8.onnx"):
        Embedder(d, precision="int8")
    (d / "model.plan").write_bytes(b"not a real plan")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="tensorrt"):
            Embedder(d, backend="tensorrt")
        with pytest.raises(ImportError, match="tensorrt"):
            Embedder(d, precision="tensorrt_fp16")  # auto picks TensorRT for a plan
    with pytest.raises(ValueError, match="TensorRT plan"):
        Embedder(d, backend="onnxruntime", precision="tensorrt_fp16")
    with pytest.raises(ValueError, match="not a TensorRT plan"):
        Embedder(d, backend="tensorrt", precision="fp32")
    with pytest.raises(ValueError, match="backend"):
        Embedder(d, backend="cuda")
    with pytest.raises(ValueError, match="providers"):
        Embedder(d, providers=["NoSuchExecutionProvider"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Embedder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="tki.json"):
        Embedder(tmp_path / "empty")


def test_embed_image_raises_per_item_error(emb):
    with pytest.raises(ImageLoadError, match="empty file"):
        emb.embed_image(b"")
    res = emb.embed_images([b"", b"junk"])
    assert res.embeddings.shape == (0, TINY_DIM) and len(res.errors) == 2 and res.indices.size == 0


def test_embedder_equals_tkimodel_encode_image(request, tmp_path, pacs_dir):
    torch = pytest.importorskip("torch")
    from tki_sdk.cli.export import main as export_main
    from tki_sdk.train.model import TKIModel

    tiny_checkpoint = request.getfixturevalue("tiny_checkpoint")
    assert export_main(["--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "export"),
                        "--precision", "fp32"]) == 0
    e = Embedder(tmp_path / "export", threads=1)
    model = TKIModel.from_checkpoint(tiny_checkpoint).eval()
    files = pacs_sample(pacs_dir, per_class=1)
    res = e.embed_images(files)
    pixels = Preprocessor.from_metadata(e.metadata).batch(files)
    with torch.no_grad():
        ref = model.encode_image(torch.from_numpy(pixels)).numpy()
    cos = np.sum(res.embeddings * ref, axis=1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(res.embeddings, axis=1)
    assert cos.min() >= 0.99999
    np.testing.assert_allclose(res.embeddings, ref, atol=1e-4)


class _FakeCudart:
    """Host-memory stand-in for cuda-python's runtime API (pointers are real host addresses)."""

    class cudaMemcpyKind:  # noqa: N801 - mirrors cuda-python's names
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    def __init__(self):
        self.buffers = {}
        self.copies = []

    def cudaStreamCreate(self):  # noqa: N802
        return (0, 7)

    def cudaStreamDestroy(self, s):  # noqa: N802
        return (0,)

    def cudaMalloc(self, n):  # noqa: N802
        import ctypes

        buf = ctypes.create_string_buffer(n)
        self.buffers[ctypes.addressof(buf)] = buf
        return (0, ctypes.addressof(buf))

    def cudaFree(self, p):  # noqa: N802
        self.buffers.pop(p, None)
        return (0,)

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):  # noqa: N802
        import ctypes

        assert stream == 7
        self.copies.append(kind)
        ctypes.memmove(dst, src, n)
        return (0,)

    def cudaStreamSynchronize(self, s):  # noqa: N802
        return (0,)


def _fake_tensorrt(weights, max_batch):
    import ctypes
    import types

    trt = types.SimpleNamespace()
    trt.__version__ = "10.fake"
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.DataType = types.SimpleNamespace(FLOAT="f32")
    trt.nptype = lambda dt: np.float32

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class Context:
        def __init__(self):
            self.shape = None
            self.addr = {}

        def set_input_shape(self, name, shape):
            assert name == "pixel_values"
            if not 1 <= shape[0] <= max_batch:
                return False
            self.shape = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            return (self.shape[0], TINY_DIM) if name == "embedding" else self.shape

        def set_tensor_address(self, name, ptr):
            self.addr[name] = ptr

        def execute_async_v3(self, stream):
            n = int(np.prod(self.shape))
            x = np.ctypeslib.as_array((ctypes.c_float * n).from_address(self.addr["pixel_values"])).reshape(self.shape)
            y = tiny_reference(x, weights).astype(np.float32)
            ctypes.memmove(self.addr["embedding"], y.ctypes.data, y.nbytes)
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return ["pixel_values", "embedding"][i]

        def get_tensor_mode(self, name):
            return "in" if name == "pixel_values" else "out"

        def get_tensor_dtype(self, name):
            return "f32"

        def get_tensor_shape(self, name):
            return (-1, 3, TINY_SIZE, TINY_SIZE) if name == "pixel_values" else (-1, TINY_DIM)

        def get_tensor_profile_shape(self, name, profile):
            return [(1, 3, TINY_SIZE, TINY_SIZE), (max_batch, 3, TINY_SIZE, TINY_SIZE),
                    (max_batch, 3, TINY_SIZE, TINY_SIZE)]

        def create_execution_context(self):
            return Context()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return Engine() if data == b"PLAN" else None

    trt.Logger, trt.Runtime = Logger, Runtime
    return trt


def test_tensorrt_runner_data_flow_with_stand_in_modules(tmp_path, monkeypatch):
    """No GPU here: run TensorRTRunner against host-memory stand-ins of tensorrt / cuda-python that execute
    the tiny model, checking shapes, profile-bounded chunking and the copies in and out."""
    import sys
    import types

    d, w = make_tiny_export(tmp_path / "exp", extra_artifacts={"tensorrt_fp16": {"file": "model.plan"}})
    (d / "model.plan").write_bytes(b"PLAN")
    cudart = _FakeCudart()
    cuda_pkg = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = cudart
    cuda_pkg.bindings = bindings
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(w, max_batch=8))
    monkeypatch.setitem(sys.modules, "cuda", cuda_pkg)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)
    e = Embedder(d, backend="tensorrt")
    assert e.backend == "tensorrt" and e.provider == "TensorRT" and e.precision == "tensorrt_fp16"
    x = np.random.default_rng(4).standard_normal((20, 3, TINY_SIZE, TINY_SIZE)).astype(np.float32)
    np.testing.assert_allclose(e.embed_pixels(x), tiny_reference(x, w), atol=2e-6)
    assert cudart.copies.count(1) == 3 and cudart.copies.count(2) == 3  # 20 images, max batch 8 -> 3 calls
    (d / "model.plan").write_bytes(b"stale")
    with pytest.raises(RuntimeError, match="rebuild it"):
        Embedder(d, backend="tensorrt")


IMPORT_ORDER = """
import sys
sys.modules["torch"] = None  # the runtime must not need it; also keeps torch's own libstdc++ load out
import usearch.index  # no system libstdc++ loaded first: importing onnxruntime now would crash
from tki_sdk.runtime import Embedder
from tki_sdk.runtime.engine.embedder import available_backends
from tki_sdk.runtime.native import import_onnxruntime
for call in (lambda: Embedder(sys.argv[1]), import_onnxruntime):
    try:
        call()
    except ImportError as e:
        print("refused:", e)
print("backends:", available_backends()["onnxruntime"])
print("onnxruntime loaded:", "onnxruntime" in sys.modules)
"""


def test_usearch_before_onnxruntime_is_refused_in_one_line_not_a_crash(tiny):
    import subprocess
    import sys

    export = tiny[0]
    proc = subprocess.run([sys.executable, "-c", IMPORT_ORDER, str(export)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    refused = [x for x in lines if x.startswith("refused:")]
    assert len(refused) == 2 and all("import tki_sdk.runtime.Embedder (or onnxruntime) before usearch" in x
                                     for x in refused)
    assert "backends: None" in lines and "onnxruntime loaded: False" in lines
