"""CPU side of the GPU session wrapper (``tki_sdk.runtime.engine.ort_session``).

The wrapper's bound / static-shape paths are run on the CPU execution provider and compared with a plain
``onnxruntime.InferenceSession.run`` and with the float64 numpy reference of the tiny model; provider
selection is checked by pretending CUDA / TensorRT exist (the options are recorded, nothing runs on a GPU).
"""
from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort
import pytest
from runtime_fixtures import TINY_DIM, TINY_SIZE, make_tiny_export, tiny_reference

from tki_sdk.runtime.engine import ort_session as osm
from tki_sdk.runtime.engine.ort_session import CPU, CUDA, TENSORRT, OrtSession, ProviderUnavailable, select_providers


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d, w = make_tiny_export(tmp_path_factory.mktemp("ortsess") / "exp", seed=5)
    return d / "model.onnx", w


def _x(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, TINY_SIZE, TINY_SIZE)).astype(np.float32)


def _plain(path, x):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("io_binding", [False, True])
def test_cpu_run_equals_plain_session(tiny, io_binding):
    path, w = tiny
    s = OrtSession(path, device="cpu", io_binding=io_binding, threads=1)
    assert s.provider == CPU and s.device_type == "cpu" and s.io_binding is io_binding
    assert s.output_dim == TINY_DIM and s.fixed_batch is None and not s.cuda_graph
    outs = {}
    for n, seed in ((1, 1), (5, 2), (5, 3), (3, 4)):
        x = _x(n, seed)
        y = s.run(x)
        assert y.shape == (n, TINY_DIM) and y.dtype == np.float32
        np.testing.assert_allclose(y, _plain(path, x), atol=1e-6)
        np.testing.assert_allclose(y, tiny_reference(x, w), atol=2e-6)
        outs[seed] = (x, y)
    # The second batch of 5 reused the bound buffers; the first result must not have been overwritten.
    x2, y2 = outs[2]
    np.testing.assert_allclose(y2, tiny_reference(x2, w), atol=2e-6)
    assert s.run(np.zeros((0, 3, TINY_SIZE, TINY_SIZE), np.float32)).shape == (0, TINY_DIM)


def test_run_device_keeps_output_as_ortvalue(tiny):
    path, w = tiny
    s = OrtSession(path, device="cpu", io_binding=True, threads=1)
    x = _x(4, 7)
    xv = s.to_device(x)
    yv = s.run_device(xv)
    assert isinstance(yv, ort.OrtValue) and list(yv.shape()) == [4, TINY_DIM]
    np.testing.assert_allclose(yv.numpy(), tiny_reference(x, w), atol=2e-6)
    # the bound input buffer is restored: a host run of the same shape still sees its own data
    x2 = _x(4, 8)
    np.testing.assert_allclose(s.run(x2), tiny_reference(x2, w), atol=2e-6)


def test_static_shapes_pad_create_and_chunk(tiny):
    path, w = tiny
    s = OrtSession(path, device="cpu", static_shapes=True, graph_batch_sizes=[4], max_graphs=2, threads=1)
    assert s.static_shapes and s.io_binding and s.captured == [4]
    for n, captured in ((4, [4]), (3, [4]), (1, [1, 4]), (10, [1, 4]), (2, [1, 4]), (9, [1, 4])):
        x = _x(n, 10 + n)
        np.testing.assert_allclose(s.run(x), tiny_reference(x, w), atol=2e-6)
        assert s.captured == captured, (n, s.captured)
    # The batch axis of a static session really is pinned: its session refuses another batch size.
    sess4 = s._static[4][0]
    with pytest.raises(Exception):
        sess4.run(None, {s.input_name: _x(3)})
    x = _x(4, 99)
    yv = s.run_device(s.to_device(x))
    np.testing.assert_allclose(yv.numpy(), tiny_reference(x, w), atol=2e-6)


def test_plan_policy(tiny):
    path, _ = tiny
    s = OrtSession(path, device="cpu", static_shapes=True, graph_batch_sizes=[8, 32], max_graphs=2, threads=1)
    assert s._plan(32) == [(32, 32)]
    assert s._plan(20) == [(20, 32)]      # 32 <= 2 * 20: pad
    assert s._plan(3) == [(3, 8)]         # no room for another session: pad to the smallest that fits
    assert s._plan(70) == [(32, 32), (32, 32), (6, 8)]
    assert s.captured == [8, 32]


def test_fixed_batch_model_bound(tmp_path):
    d, w = make_tiny_export(tmp_path / "fixed", fixed_batch=4, seed=6)
    s = OrtSession(d / "model.onnx", device="cpu", io_binding=True, static_shapes=True, threads=1)
    assert s.fixed_batch == 4 and not s.static_shapes  # already static: nothing to pin
    x = _x(4, 3)
    np.testing.assert_allclose(s.run(x), tiny_reference(x, w), atol=2e-6)
    with pytest.raises(ValueError, match="input shape"):
        s.run(np.zeros((4, 3, 8, 8), np.float32))


def test_cuda_graph_is_ignored_on_cpu_with_a_warning(tiny, caplog):
    path, w = tiny
    with caplog.at_level(logging.WARNING, logger="tki_sdk.runtime.engine.ort_session"):
        s = OrtSession(path, device="cpu", cuda_graph=True, threads=1)
    assert not s.cuda_graph and not s.static_shapes and not s.io_binding
    assert any("cuda_graph needs the CUDA" in r.message for r in caplog.records)
    x = _x(2, 1)
    np.testing.assert_allclose(s.run(x), tiny_reference(x, w), atol=2e-6)


# ------------------------------------------------------------------------------------ provider selection
ALL = [TENSORRT, CUDA, CPU]


def test_select_auto_prefers_cuda_and_never_tensorrt():
    assert select_providers([CPU]) == [(CPU, {})]
    assert select_providers(ALL) == [(CUDA, {"device_id": "0"}), (CPU, {})]
    assert select_providers(["DmlExecutionProvider", CPU]) == [("DmlExecutionProvider", {}), (CPU, {})]
    assert select_providers(ALL, device="cpu") == [(CPU, {})]
    assert select_providers(ALL, device="cuda", device_id=1, cuda_graph=True) == [
        (CUDA, {"device_id": "1", "enable_cuda_graph": "1"}), (CPU, {})]


def test_select_tensorrt_options(tmp_path):
    got = select_providers(ALL, device="tensorrt", input_chw=(3, 224, 224), trt_max_batch=256,
                           trt_cache_dir=tmp_path / "c", cuda_options={"cudnn_conv_algo_search": "HEURISTIC"})
    assert [p for p, _ in got] == [TENSORRT, CUDA, CPU]
    trt = got[0][1]
    assert trt == {
        "device_id": "0",
        "trt_fp16_enable": "True",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(tmp_path / "c"),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(tmp_path / "c"),
        "trt_profile_min_shapes": "pixel_values:1x3x224x224",
        "trt_profile_opt_shapes": "pixel_values:64x3x224x224",
        "trt_profile_max_shapes": "pixel_values:256x3x224x224",
    }
    assert got[1][1] == {"device_id": "0", "cudnn_conv_algo_search": "HEURISTIC"}
    no_cuda = select_providers([TENSORRT, CPU], device="tensorrt", trt_fp16=False, trt_max_batch=8, cuda_graph=True)
    assert [p for p, _ in no_cuda] == [TENSORRT, CPU]
    assert no_cuda[0][1]["trt_fp16_enable"] == "False" and no_cuda[0][1]["trt_cuda_graph_enable"] == "True"
    assert "trt_profile_min_shapes" not in no_cuda[0][1]  # input shape unknown: TensorRT derives profiles


def test_select_explicit_providers_fill_defaults_and_keep_given():
    got = select_providers(ALL, providers=[(CUDA, {"device_id": 2, "arena_extend_strategy": "kSameAsRequested"}),
                                           TENSORRT, CPU], input_chw=(3, 32, 32), trt_max_batch=16)
    assert got[0] == (CUDA, {"device_id": "2", "arena_extend_strategy": "kSameAsRequested"})
    assert got[1][0] == TENSORRT and got[1][1]["trt_profile_max_shapes"] == "pixel_values:16x3x32x32"
    assert got[2] == (CPU, {})


def test_select_errors_are_one_line():
    with pytest.raises(ProviderUnavailable, match="onnxruntime-gpu") as e:
        select_providers([CPU], device="cuda")
    assert "\n" not in str(e.value)
    with pytest.raises(ProviderUnavailable, match="libnvinfer"):
        select_providers([CUDA, CPU], device="tensorrt")
    with pytest.raises(ProviderUnavailable, match=r"\['NoSuchExecutionProvider'\] not available"):
        select_providers([CPU], providers=["NoSuchExecutionProvider"])
    with pytest.raises(ValueError, match="device 'gpu' unknown"):
        select_providers([CPU], device="gpu")


class _Recorder:
    """Stands in for ``onnxruntime.InferenceSession``: records the providers asked for, runs on the CPU."""

    def __init__(self, real):
        self.real = real
        self.calls: list[list] = []

    def __call__(self, path, sess_options=None, providers=None):
        self.calls.append(list(providers or []))
        return self.real(path, sess_options=sess_options, providers=[CPU])


def test_pretend_cuda_and_tensorrt_exist(tiny, monkeypatch, caplog, tmp_path):
    path, w = tiny
    rec = _Recorder(ort.InferenceSession)
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(ALL))
    monkeypatch.setattr(ort, "InferenceSession", rec)
    monkeypatch.setattr(osm, "_preload_cuda_libraries", lambda _ort: None)
    with caplog.at_level(logging.WARNING, logger="tki_sdk.runtime.engine.ort_session"):
        s = OrtSession(path, threads=1)
    assert rec.calls[-1] == [(CUDA, {"device_id": "0"}), (CPU, {})]
    # onnxruntime fell back to the CPU (as a CPU-only build does): the wrapper says so and follows it.
    assert s.provider == CPU and s.device_type == "cpu" and not s.io_binding
    assert any("could not start CUDAExecutionProvider" in r.message for r in caplog.records)
    x = _x(3, 5)
    np.testing.assert_allclose(s.run(x), tiny_reference(x, w), atol=2e-6)

    # asked for by name, TensorRT must be what runs: here the session started on the CPU, so it is refused
    with pytest.raises(ProviderUnavailable, match="did not start TensorrtExecutionProvider"):
        OrtSession(path, device="tensorrt", trt_cache_dir=tmp_path / "trt", trt_max_batch=32, cuda_graph=True)
    trt_call = rec.calls[-1]
    assert [p for p, _ in trt_call] == [TENSORRT, CUDA, CPU]
    assert trt_call[0][1]["trt_profile_max_shapes"] == f"pixel_values:32x3x{TINY_SIZE}x{TINY_SIZE}"
    assert (tmp_path / "trt").is_dir()  # engine cache folder made ready
    # the main session (free batch axis) never captures graphs; only the per-batch sessions would
    assert "trt_cuda_graph_enable" not in trt_call[0][1] and "enable_cuda_graph" not in trt_call[1][1]


def test_bad_model_and_arguments(tmp_path, tiny):
    path, _ = tiny
    with pytest.raises(FileNotFoundError, match="does not exist"):
        OrtSession(tmp_path / "none.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(RuntimeError, match="cannot load"):
        OrtSession(bad)
    with pytest.raises(ValueError, match="threads"):
        OrtSession(path, threads=0)
    s = OrtSession(path, device="cpu", threads=1)
    with pytest.raises(ValueError, match="4-d"):
        s.run(np.zeros((3, 32), np.float32))


class _Claims:
    """A real CPU session that reports the provider it was asked for (nothing is run through it)."""

    def __init__(self, sess, first):
        self._sess, self._first = sess, first

    def __getattr__(self, name):
        return getattr(self._sess, name)

    def get_providers(self):
        return [self._first, CPU]


def test_graph_options_go_to_the_per_batch_sessions_only(tiny, monkeypatch):
    path, _ = tiny
    calls: list[list] = []
    real = ort.InferenceSession

    def fake(p, sess_options=None, providers=None):
        calls.append(list(providers))
        return _Claims(real(p, sess_options=sess_options, providers=[CPU]), providers[0][0])

    monkeypatch.setattr(ort, "get_available_providers", lambda: list(ALL))
    monkeypatch.setattr(ort, "InferenceSession", fake)
    monkeypatch.setattr(osm, "_preload_cuda_libraries", lambda _ort: None)
    s = OrtSession(path, cuda_graph=True, device_id=1)
    assert s.provider == CUDA and s.device_type == "cuda" and s.cuda_graph and s.static_shapes and s.io_binding
    assert calls[-1] == [(CUDA, {"device_id": "1"}), (CPU, {})]
    assert s._graph_provider_list == [(CUDA, {"device_id": "1", "enable_cuda_graph": "1"}), (CPU, {})]
    assert s.captured == []  # captured on first use, on the GPU
