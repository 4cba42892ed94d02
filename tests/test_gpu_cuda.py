"""GPU tests (``pytest -m gpu``): the CUDA paths of the runtime and of ``tki-bench gpu`` on a real GPU.

Each test skips where onnxruntime has no CUDA provider (onnxruntime-gpu missing) or torch sees no GPU.
benchmarks/gpu/run_gpu_suite.sh runs them on a GPU machine.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from runtime_fixtures import TINY_DIM, TINY_SIZE, make_tiny_export, tiny_reference

ort = pytest.importorskip("onnxruntime")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                       reason="onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu on a GPU machine)"),
]

NO_TF32 = {"use_tf32": "0"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d, w = make_tiny_export(tmp_path_factory.mktemp("gpu") / "exp", seed=11)
    return d, w


def _x(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, TINY_SIZE, TINY_SIZE)).astype(np.float32)


def test_cuda_session_with_io_binding(tiny):
    from tki_sdk.runtime.engine.ort_session import OrtSession

    d, w = tiny
    s = OrtSession(d / "model.onnx", cuda_options=NO_TF32)
    assert s.provider == "CUDAExecutionProvider" and s.device_type == "cuda" and s.io_binding
    for n, seed in ((1, 1), (5, 2), (5, 3)):
        x = _x(n, seed)
        np.testing.assert_allclose(s.run(x), tiny_reference(x, w), atol=1e-5)
    x = _x(6, 4)
    yv = s.run_device(s.to_device(x))
    assert yv.device_name() == "cuda" and list(yv.shape()) == [6, TINY_DIM]
    np.testing.assert_allclose(yv.numpy(), tiny_reference(x, w), atol=1e-5)
    plain = OrtSession(d / "model.onnx", io_binding=False, cuda_options=NO_TF32)
    np.testing.assert_allclose(plain.run(x), tiny_reference(x, w), atol=1e-5)


def test_cuda_graph_replays_each_new_batch(tiny):
    from tki_sdk.runtime.engine.ort_session import OrtSession

    d, w = tiny
    s = OrtSession(d / "model.onnx", cuda_graph=True, graph_batch_sizes=[4], max_graphs=2, cuda_options=NO_TF32)
    assert s.cuda_graph and s.static_shapes and s.captured == [4]
    ys = []
    for seed in (1, 2, 3):  # every call after capture is a replay on the new contents of the bound input
        x = _x(4, seed)
        y = s.run(x)
        np.testing.assert_allclose(y, tiny_reference(x, w), atol=1e-5)
        ys.append(y)
    assert not np.allclose(ys[0], ys[1])
    x = _x(3, 9)  # padded into the batch-4 graph
    np.testing.assert_allclose(s.run(x), tiny_reference(x, w), atol=1e-5)
    x = _x(1, 10)  # a second graph
    np.testing.assert_allclose(s.run(x), tiny_reference(x, w), atol=1e-5)
    assert s.captured == [1, 4]
    x = _x(4, 12)
    np.testing.assert_allclose(s.run_device(s.to_device(x)).numpy(), tiny_reference(x, w), atol=1e-5)


def test_embedder_runs_on_cuda(tiny):
    from tki_sdk.runtime import Embedder

    d, w = tiny
    e = Embedder(d)
    assert e.provider == "CUDAExecutionProvider"
    x = _x(37, 5)
    np.testing.assert_allclose(e.embed_pixels(x), tiny_reference(x, w), atol=1e-3)  # TF32 on by default
    cpu = Embedder(d, providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(e.embed_pixels(x), cpu.embed_pixels(x), atol=1e-3)


def test_gpu_suite_on_a_tiny_export(tiny_checkpoint, tmp_path, pacs_dir):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    from tki_sdk.export.pipeline import ExportConfig, run_export

    out = tmp_path / "export"
    run_export(ExportConfig(out=out, checkpoint=tiny_checkpoint, precisions=("fp32", "fp16"), calib_images=pacs_dir,
                            val_count=8, time_torch=False, progress=False))
    from tki_sdk.cli import bench as cli

    code = cli.main(["gpu", "--model-dir", str(out), "--checkpoint", str(tiny_checkpoint), "--dataset-dir", str(pacs_dir),
                    "--out-dir", str(tmp_path / "res"), "--name", "tiny", "--batch-sizes", "1,8",
                    "--seconds", "0.1", "--warmup", "2", "--parity-images", "32", "--e2e-images", "64",
                    "--e2e-batch-size", "16", "--no-progress",
                    # torch.compile is left to the suite itself: minutes of compiling here would buy nothing new
                    "--backends", "torch-fp32,torch-fp16,torch-fp16-cudagraph,ort-fp32-cuda,ort-fp16-cuda-host,"
                                  "ort-fp16-cuda-iobind,ort-fp16-cuda-graph"])
    assert code == 0
    doc = json.loads((tmp_path / "res" / "gpu" / "tiny.json").read_text())
    res = doc["results"]
    expected = {"torch-fp32", "torch-fp16", "torch-fp16-cudagraph", "ort-fp32-cuda", "ort-fp16-cuda-host",
                "ort-fp16-cuda-iobind", "ort-fp16-cuda-graph"}
    assert expected <= set(res["parity"]), res["skipped"]
    for name, p in res["parity"].items():
        assert p["pass"], (name, p)
    measured = {(r["backend"], r["batch_size"]) for r in res["throughput"]}
    assert {(b, n) for b in expected for n in (1, 8)} <= measured, res["skipped"]
    assert len(res["e2e"]) == 2 and res["e2e"][0]["embedded"] == 64
    assert res["e2e"][0]["provider"] == "CUDAExecutionProvider"
    assert doc["machine"]["gpus"] and all((tmp_path / "res" / "gpu" / f"tiny_{k}.png").is_file()
                                          for k in ("throughput", "latency"))
