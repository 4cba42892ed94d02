"""CPU side of ``tki-bench gpu`` (benchmarks/gpu_throughput.py).

The GPU-only parts (torch fp16 / compile / CUDA graphs, the CUDA provider) run on a GPU machine
(benchmarks/gpu/run_gpu_suite.sh and tests/test_gpu_cuda.py). Here: the one-line skip without CUDA, the
timing helper, the onnxruntime backends' plumbing on the CPU provider through the export validator, the
summary, and the end-to-end measurement with a CPU Embedder on real PACS files.
"""
from __future__ import annotations

import numpy as np
import pytest
from runtime_fixtures import TINY_SIZE, make_tiny_export, tiny_reference

from tki_sdk.cli import bench as cli
from tki_sdk.benchmarks import gpu_throughput as gt
from tki_sdk.export.validate import ValidationInputs, validate_runner


@pytest.fixture
def no_cuda(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_no_cuda_prints_one_line_and_writes_no_result(no_cuda, tmp_path, capsys):
    code = cli.main(["gpu", "--out-dir", str(tmp_path), "--model-dir", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == cli.EXIT_USAGE
    assert len(err) == 1 and err[0].startswith("tki-bench gpu: skipped: no CUDA device"), err
    assert not list(tmp_path.rglob("*.json"))


def test_no_cuda_through_the_suite_registry(no_cuda, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(cli.SUITES, "gpu", ("tki_sdk.benchmarks.gpu_throughput", "GPU parity and throughput"))
    code = cli.main(["gpu", "--out-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == cli.EXIT_USAGE and len(err) == 1 and "no CUDA device" in err[0]
    assert not list(tmp_path.rglob("*.json"))
    code = cli.main(["all", "--suites", "gpu", "--out-dir", str(tmp_path)])
    assert code == 0 and "skipped gpu" in capsys.readouterr().err


def test_measure_counts_and_percentiles():
    calls = {"step": 0, "sync": 0}

    def step():
        calls["step"] += 1

    def sync():
        calls["sync"] += 1

    r = gt.measure(step, sync, 8, seconds=0.02, warmup=4, min_iters=3)
    assert calls["step"] == 4 + r["latency_calls"] + r["throughput_calls"]
    assert calls["sync"] == 4 + r["latency_calls"] + 1  # back-to-back calls share one final sync
    assert r["latency_calls"] >= 3 and r["throughput_calls"] >= 3
    assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] and r["images_per_s"] > 0


def _inputs(w, n=16, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.uniform(-2, 2, (n, 3, TINY_SIZE, TINY_SIZE)).astype(np.float32)
    rnd = rng.standard_normal((n, 3, TINY_SIZE, TINY_SIZE)).astype(np.float32)
    return ValidationInputs({"images": img, "random": rnd},
                            {"images": tiny_reference(img, w), "random": tiny_reference(rnd, w)}, (1, 8))


def test_ort_backends_on_the_cpu_provider(tmp_path):
    d, w = make_tiny_export(tmp_path / "exp", seed=2)
    paths = {"fp32": d / "model.onnx", "fp16": d / "model.onnx"}  # the tiny fixture has one precision
    notes: dict[str, str] = {}
    backends = gt._ort_backends(paths, set(gt.ALL_BACKENDS), "cpu", [1, 8], notes)
    names = [b.name for b in backends]
    assert names == ["ort-fp32-cuda", "ort-fp16-cuda-host", "ort-fp16-cuda-iobind", "ort-fp16-cuda-graph"]
    assert "TensorRT provider is not available" in notes["ort-fp16-tensorrt-ep"]
    graph = backends[-1]
    assert graph.info["provider"] == "CPUExecutionProvider" and graph.info["io_binding"]
    inputs = _inputs(w)
    parity = {}
    records = []
    for b in backends:
        res = validate_runner(b.name, b.info["file"], b.host_run, inputs, threshold=b.threshold)
        assert res.passed and res.min_cosine > 0.999999, (b.name, res.failure_line())
        parity[b.name] = res.to_dict()
        x = inputs.groups["images"][:8]
        step = b.prepare(x)
        y = step()
        y = y.numpy() if hasattr(y, "numpy") else y  # device paths return the OrtValue
        np.testing.assert_allclose(np.asarray(y), tiny_reference(x, w), atol=2e-6)
        records.append({"backend": b.name, "kind": b.kind, "input": b.input, "batch_size": 8,
                        **gt.measure(step, b.sync, 8, seconds=0.01, warmup=1)})
    s = gt.summarize(records, parity, target_batch=8, target=1.0)
    assert s["best_exported"]["backend"] in names and s["meets_target"] and s["best_torch"] is None
    md = gt._markdown(parity, records, [], s, notes, "CPU")
    assert "| backend" in md and "ort-fp16-cuda-graph" in md and "Skipped: ort-fp16-tensorrt-ep" in md


def test_missing_artifact_is_noted(tmp_path):
    d, _ = make_tiny_export(tmp_path / "exp", seed=2)
    notes: dict[str, str] = {}
    got = gt._ort_backends({"fp32": d / "model.onnx"}, {"ort-fp16-cuda-iobind", "ort-fp32-cuda"}, "cpu", [4], notes)
    assert [b.name for b in got] == ["ort-fp32-cuda"] and notes == {"ort-fp16-cuda-iobind": "no fp16 artifact in the export"}


def test_summarize_excludes_failed_parity_and_compares_with_torch():
    recs = [
        {"backend": "torch-fp16", "kind": "torch", "batch_size": 256, "images_per_s": 15000.0},
        {"backend": "torch-fp16-cudagraph", "kind": "torch", "batch_size": 256, "images_per_s": 18000.0},
        {"backend": "ort-fp16-cuda-iobind", "kind": "onnxruntime", "batch_size": 256, "images_per_s": 21000.0},
        {"backend": "tensorrt-plan", "kind": "tensorrt", "batch_size": 256, "images_per_s": 40000.0},
        {"backend": "tensorrt-plan", "kind": "tensorrt", "batch_size": 32, "images_per_s": 90000.0},
    ]
    parity = {"tensorrt-plan": {"pass": False}, "ort-fp16-cuda-iobind": {"pass": True}, "torch-fp16": {"pass": True},
              "torch-fp16-cudagraph": {"pass": True}}
    s = gt.summarize(recs, parity)
    assert s["best_exported"] == {"backend": "ort-fp16-cuda-iobind", "images_per_s": 21000.0}
    assert s["best_torch"]["backend"] == "torch-fp16-cudagraph"
    assert s["meets_target"] and s["exported_ahead_of_torch"] and s["parity_all_pass"] is False
    assert s["speedup_vs_best_torch"] == pytest.approx(21000 / 18000)
    s2 = gt.summarize(recs[:2], {})
    assert s2["best_exported"] is None and not s2["meets_target"] and not s2["exported_ahead_of_torch"]


def test_pick_files_spreads_over_domains(pacs_dir):
    files = gt.pick_files(pacs_dir, 40)
    assert len(files) == 40 and files == gt.pick_files(pacs_dir, 40)
    domains = {f.relative_to(pacs_dir).parts[0] for f in files}
    assert domains == {p.name for p in pacs_dir.iterdir() if p.is_dir()}
    assert all(f.suffix == ".jpg" for f in gt.pick_files(pacs_dir, 10, exts=(".jpg",)))


def test_end_to_end_with_a_cpu_embedder(tmp_path, pacs_dir):
    from tki_sdk.runtime import Embedder

    d, w = make_tiny_export(tmp_path / "exp", seed=4)
    emb = Embedder(d, threads=1)
    files = gt.pick_files(pacs_dir, 12, exts=(".jpg",))
    r = gt.end_to_end(emb, files, batch_size=4, workers=2, seconds=0.02)
    assert r["embedded"] == 12 and r["errors"] == 0 and r["files"] == 12
    assert r["images_per_s"] > 0 and r["decode_images_per_s"] > 0 and r["inference_images_per_s"] > 0
    slower = min(r["decode_images_per_s"], r["inference_images_per_s"])
    assert r["limit"] == ("decode + preprocess" if r["decode_images_per_s"] == slower else "inference")
    assert r["fraction_of_limit"] == pytest.approx(r["images_per_s"] / slower)
    assert r["provider"] == "CPUExecutionProvider" and r["precision"] == "fp32"


def test_count_flops_equals_the_vit_formula():
    """FLOPs of vanilla TKI-Tiny-ViT against the transformer's formula (a matmul [m,k]x[k,n] is 2mkn)."""
    pytest.importorskip("open_clip")
    from tki_sdk.train.model import TKIModel

    m = TKIModel.vanilla("TKI-Tiny-ViT")
    v = m.visual
    p = v.conv1.kernel_size[0]
    d = v.conv1.out_channels
    g = 32 // p
    t = g * g + 1  # patch tokens + class token
    blocks = v.transformer.resblocks
    mlp = blocks[0].mlp.c_fc.out_features
    per_block = 2 * t * d * 3 * d + 2 * (2 * t * t * d) + 2 * t * d * d + 2 * (2 * t * d * mlp)
    expected = 2 * g * g * d * 3 * p * p + len(blocks) * per_block + 2 * d * m.embedding_dim
    got = gt.count_flops(m, np.zeros((1, 3, 32, 32), np.float32))
    assert got == expected
