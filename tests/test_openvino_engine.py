"""OpenVINO as a runtime engine (runtime/openvino_runner.py, Embedder(backend="openvino")) and the NNCF int8
artifact of ``tki-export --openvino``, checked against numpy and a float64 torch reference."""
from __future__ import annotations

import hashlib
import threading

import numpy as np
import pytest

pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'tki-sdk[openvino]')")

from export_fixtures import cosines, image_folder, open_clip_pixels, torch_float64  # noqa: E402
from runtime_fixtures import TINY_DIM, TINY_SIZE, make_tiny_export, pacs_sample, tiny_reference  # noqa: E402
from tki_sdk.runtime import Embedder, ModelMetadata  # noqa: E402
from tki_sdk.runtime.engine.openvino_runner import OpenVINORunner  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_export(tmp_path_factory.mktemp("ov_tiny") / "export")


def test_runner_equals_numpy_reference(tiny):
    d, w = tiny
    r = OpenVINORunner(d / "model.onnx", threads=1)
    x = np.random.default_rng(0).standard_normal((7, 3, TINY_SIZE, TINY_SIZE)).astype(np.float32)
    np.testing.assert_allclose(r.run(x), tiny_reference(x, w), rtol=0, atol=2e-6)
    np.testing.assert_allclose(r.run(x[:1]), tiny_reference(x[:1], w), rtol=0, atol=2e-6)  # batch changes shape


def test_runner_is_safe_from_several_threads(tiny):
    d, w = tiny
    r = OpenVINORunner(d / "model.onnx", threads=1)
    xs = [np.random.default_rng(i).standard_normal((3, 3, TINY_SIZE, TINY_SIZE)).astype(np.float32) for i in range(8)]
    got: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        for _ in range(5):
            got[i] = r.run(xs[i])

    ts = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for i, x in enumerate(xs):
        np.testing.assert_allclose(got[i], tiny_reference(x, w), atol=2e-6)


def test_embedder_on_openvino(tiny, pacs_dir):
    d, w = tiny
    e = Embedder(d, backend="openvino", threads=1)
    assert (e.backend, e.precision, e.provider) == ("openvino", "fp32", "OpenVINO CPU")
    x = np.random.default_rng(1).standard_normal((5, 3, TINY_SIZE, TINY_SIZE)).astype(np.float32)
    np.testing.assert_allclose(e.embed_pixels(x), tiny_reference(x, w), atol=2e-6)
    files = pacs_sample(pacs_dir, per_class=1)
    res = e.embed_images(files, batch_size=3)
    ort = Embedder(d, backend="onnxruntime", threads=1).embed_images(files, batch_size=3)
    assert res.errors == [] and res.embeddings.shape == (len(files), TINY_DIM)
    np.testing.assert_allclose(res.embeddings, ort.embeddings, atol=2e-6)


@pytest.fixture(scope="module")
def ov_export(tmp_path_factory, tiny_checkpoint, pacs_dir):
    from tki_sdk.export.fused import load_model
    from tki_sdk.export.pipeline import ExportConfig, run_export

    root = tmp_path_factory.mktemp("ov_export")
    calib = image_folder(root / "calib", pacs_dir, n=24)
    out = root / "export"
    result = run_export(ExportConfig(out=out, checkpoint=tiny_checkpoint, precisions=("fp32",), openvino=True, text=False,
                                     calib_images=calib, calib_count=16, val_count=8, timing_rounds=1,
                                     time_torch=False, progress=False))
    return {"out": out, "result": result, "model": load_model(tiny_checkpoint)}


def test_export_records_the_openvino_artifact(ov_export):
    out = ov_export["out"]
    md = ModelMetadata.load(out)
    art = md.artifacts["openvino_int8"]
    assert art["file"] == "model.ov.int8.onnx" and art["runtime"] == "openvino" and art["format"] == "onnx"
    assert art["precision"] == "int8" and art["parity_pass"] is True and art["parity_min_cosine"] >= 0.99
    assert art["scheme"] == "nncf_ptq" and art["overflow_fix"] == "enable" and art["excluded_nodes"] > 0
    assert art["sha256"] == hashlib.sha256((out / art["file"]).read_bytes()).hexdigest()
    assert md.artifacts["fp32"]["engines"]["openvino"]["parity_pass"] is True
    import onnx

    g = onnx.load(str(out / art["file"])).graph
    ops = {n.op_type for n in g.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert ov_export["result"].warnings == []


def test_openvino_int8_matches_torch_float64_on_real_images(ov_export, pacs_dir):
    model = ov_export["model"]
    files = pacs_sample(pacs_dir, per_class=1, classes=("dog", "house", "guitar"))
    x = open_clip_pixels(files, model)  # open_clip's own preprocessing, not the runtime's
    ref = torch_float64(model, x)
    got = OpenVINORunner(ov_export["out"] / "model.ov.int8.onnx", threads=2).run(x)
    assert cosines(got, ref).min() >= 0.99
    e = Embedder(ov_export["out"], backend="openvino", threads=2)
    assert e.precision == "openvino_int8"
    np.testing.assert_allclose(e.embed_pixels(x), got, atol=1e-6)


def test_validate_export_runs_the_openvino_artifact_on_openvino(ov_export):
    from tki_sdk.export.pipeline import validate_export

    res = validate_export(ov_export["out"], ov_export["model"], threads=1)
    assert res["openvino_int8"].passed and res["fp32"].passed


def test_auto_measures_both_engines(ov_export, tmp_path, monkeypatch):
    monkeypatch.setenv("TKI_CACHE_DIR", str(tmp_path))
    e = Embedder(ov_export["out"], threads=1)
    assert set(e.engine_choice.images_per_s) == {"onnxruntime:fp32", "openvino:fp32", "openvino:openvino_int8"}
    assert f"{e.backend}:{e.precision}" == max(e.engine_choice.images_per_s, key=e.engine_choice.images_per_s.get)
    with pytest.raises(ValueError, match="validated on OpenVINO"):
        Embedder(ov_export["out"], backend="onnxruntime", precision="openvino_int8")
