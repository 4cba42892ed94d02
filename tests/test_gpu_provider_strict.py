"""A requested GPU provider that does not start is an error, never a quiet run elsewhere (issue 26).

onnxruntime-gpu lists ``TensorrtExecutionProvider`` (and ``CUDAExecutionProvider``) even where TensorRT's or
CUDA's libraries are missing; the session then starts on the next provider in the list and says nothing. Here
the real CPU-only onnxruntime is told that CUDA and TensorRT exist (``get_available_providers`` patched): it
is asked for them, starts on the CPU, and :class:`OrtSession` must refuse in one line. ``device="auto"``
(no provider requested) keeps its documented fallback.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from runtime_fixtures import make_tiny_export, tiny_reference

from tki_sdk.benchmarks import gpu_backends as gb
from tki_sdk.runtime.engine import ort_session as osm
from tki_sdk.runtime.engine.ort_session import CPU, CUDA, TENSORRT, OrtSession, ProviderUnavailable

LISTED = [TENSORRT, CUDA, CPU]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d, w = make_tiny_export(tmp_path_factory.mktemp("strict") / "exp", seed=11)
    return d / "model.onnx", w


@pytest.fixture
def gpu_listed(monkeypatch, tmp_path):
    """onnxruntime claims CUDA and TensorRT; the real CPU build cannot start either."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(LISTED))
    monkeypatch.setattr(osm, "_preload_cuda_libraries", lambda _ort: None)
    monkeypatch.setattr(osm, "DEFAULT_TRT_CACHE", tmp_path / "trt")


@pytest.mark.parametrize("kwargs, wanted", [
    ({"device": "cuda"}, CUDA),
    ({"device": "tensorrt"}, TENSORRT),
    ({"providers": [CUDA, CPU]}, CUDA),
    ({"providers": [TENSORRT, CUDA, CPU]}, TENSORRT),
])
def test_requested_gpu_provider_that_does_not_start_raises(tiny, gpu_listed, tmp_path, kwargs, wanted):
    path, _ = tiny
    with pytest.raises(ProviderUnavailable) as e:
        OrtSession(path, trt_cache_dir=tmp_path / "trt", **kwargs)
    msg = str(e.value)
    assert "\n" not in msg and wanted in msg and CPU in msg, msg  # names what was asked and what started


def test_auto_still_falls_back_and_reports_what_runs(tiny, gpu_listed):
    path, w = tiny
    s = OrtSession(path, threads=1)  # auto: nothing requested, CUDA preferred, the CPU acceptable
    assert s.provider == CPU and s.device_type == "cpu"
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(s.run(x), tiny_reference(x, w), atol=2e-6)


def test_cpu_request_runs_on_the_cpu(tiny, gpu_listed):
    path, _ = tiny
    assert OrtSession(path, device="cpu", threads=1).provider == CPU


def test_suite_makes_no_row_for_a_provider_that_did_not_start(tiny, gpu_listed, tmp_path):
    """The GPU suite on 'cuda' with TensorRT listed but not starting: no ORT row at all, every one noted."""
    path, _ = tiny
    notes: dict[str, str] = {}
    got = gb._ort_backends({"fp32": path, "fp16": path}, set(gb.ALL_BACKENDS), "cuda", [1, 4], notes,
                           trt_cache=tmp_path / "trt")
    assert got == []
    for name in ("ort-fp32-cuda", "ort-fp16-cuda-host", "ort-fp16-cuda-iobind", "ort-fp16-cuda-graph"):
        assert CUDA in notes[name] and "\n" not in notes[name], notes
    assert TENSORRT in notes["ort-fp16-tensorrt-ep"]


def test_tensorrt_row_needs_an_engine_in_its_cache(tiny, tmp_path):
    """onnxruntime's TensorRT provider can start and still take no node: with no engine in its cache after a
    run there is no TensorRT row (the session here is a real CPU one; only the cache folder is looked at)."""
    path, _ = tiny
    s = OrtSession(path, device="cpu", threads=1)
    cache = tmp_path / "trt"
    note = gb._tensorrt_ep_built(s, path, cache)
    assert note is not None and "built no engine" in note and "\n" not in note
    cache.mkdir()
    (cache / "TensorrtExecutionProvider_TRTKernel_graph_main_1_1_fp16_sm90.engine").write_bytes(b"x")
    assert gb._tensorrt_ep_built(s, path, cache) is None
