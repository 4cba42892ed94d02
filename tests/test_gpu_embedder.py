"""The Embedder on the GPU session wrapper, checked on the CPU: I/O binding and the CUDA-graph option give the
same embeddings as the float64 reference, and with CUDA / TensorRT pretended the right providers are asked for."""
from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort
import pytest
from runtime_fixtures import TINY_SIZE, make_tiny_export, tiny_reference

from tki_sdk.runtime import Embedder
from tki_sdk.runtime.engine import ort_session as osm


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return make_tiny_export(tmp_path_factory.mktemp("gpuemb") / "exp", seed=8)


def _x(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, TINY_SIZE, TINY_SIZE)).astype(np.float32)


def test_cpu_defaults_are_a_plain_session(export):
    d, w = export
    e = Embedder(d, threads=1)
    assert e.provider == "CPUExecutionProvider" and not e.io_binding and not e.cuda_graph
    x = _x(7, 1)
    np.testing.assert_allclose(e.embed_pixels(x), tiny_reference(x, w), atol=2e-6)


def test_io_binding_on_cpu_equals_reference_across_batches(export, pacs_dir):
    d, w = export
    e = Embedder(d, threads=1, io_binding=True)
    assert e.io_binding
    for n, seed in ((5, 1), (5, 2), (2, 3)):
        x = _x(n, seed)
        np.testing.assert_allclose(e.embed_pixels(x), tiny_reference(x, w), atol=2e-6)
    files = sorted(pacs_dir.rglob("*.jpg"))[:7]
    res = e.embed_images(files, batch_size=3, workers=2)
    np.testing.assert_allclose(res.embeddings, tiny_reference(e.preprocessor.batch(files), w), atol=2e-6)


def test_cuda_graph_request_on_cpu_warns_and_still_embeds(export, caplog):
    d, w = export
    with caplog.at_level(logging.WARNING, logger="tki_sdk.runtime.engine.ort_session"):
        e = Embedder(d, threads=1, cuda_graph=True)
    assert not e.cuda_graph and any("cuda_graph" in r.message for r in caplog.records)
    x = _x(3, 4)
    np.testing.assert_allclose(e.embed_pixels(x), tiny_reference(x, w), atol=2e-6)


def test_pretended_gpu_providers_are_requested_with_options(export, monkeypatch, tmp_path):
    d, w = export
    calls: list[list] = []
    real = ort.InferenceSession

    def recorder(path, sess_options=None, providers=None):
        calls.append(list(providers or []))
        return real(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", recorder)
    monkeypatch.setattr(osm, "_preload_cuda_libraries", lambda _ort: None)
    monkeypatch.setenv("TKI_TRT_CACHE", str(tmp_path / "trt"))
    monkeypatch.setattr(osm, "DEFAULT_TRT_CACHE", tmp_path / "trt")

    e = Embedder(d, cuda_graph=True)
    assert calls[-1] == [("CUDAExecutionProvider", {"device_id": "0"}), ("CPUExecutionProvider", {})]
    assert e.provider == "CPUExecutionProvider" and not e.cuda_graph  # what really runs is reported

    # asked for by name, TensorRT must start; here it fell back to the CPU, so the Embedder is refused
    with pytest.raises(osm.ProviderUnavailable, match="did not start TensorrtExecutionProvider"):
        Embedder(d, providers=["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    trt = calls[-1][0]
    assert trt[0] == "TensorrtExecutionProvider" and trt[1]["trt_fp16_enable"] == "True"
    assert trt[1]["trt_engine_cache_enable"] == "True" and trt[1]["trt_engine_cache_path"] == str(tmp_path / "trt")
    assert trt[1]["trt_profile_max_shapes"] == f"pixel_values:256x3x{TINY_SIZE}x{TINY_SIZE}"
    e = Embedder(d, providers=["CPUExecutionProvider"])
    x = _x(4, 5)
    np.testing.assert_allclose(e.embed_pixels(x), tiny_reference(x, w), atol=2e-6)
