"""Throughput suite on the tiny model (structure of its results, not speed), and the ViT-B-32 end-to-end export
(slow)."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from export_fixtures import cosines, image_folder, torch_float64
from tki_sdk.benchmarks import throughput
from tki_sdk.cli.bench_options import throughput as throughput_options
from tki_sdk.export.validate import THRESHOLDS, OrtRunner
from tki_sdk.common.model_metadata import ModelMetadata


def test_measure_interleaved_alternates_calls():
    order = []
    times = throughput.measure_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, rounds=3)
    assert order == ["a", "b"] + ["a", "b"] * 3  # warm-up, then rounds in turn
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}


@pytest.mark.slow  # over 20 s: run by .ci/run after the default test run (pytest -m slow)
def test_throughput_suite_on_tiny_model(tmp_path):
    p = argparse.ArgumentParser()
    throughput_options.add_arguments(p)
    args = p.parse_args(["--model", "TKI-Tiny-ViT", "--rounds", "3", "--sweep", "2", "--precisions", "fp32,int8"])
    args.quick, args.out_dir, args.suite_dir, args.no_progress, args.name = True, tmp_path, tmp_path / "tp", True, None
    args.suite_dir.mkdir()
    res = throughput.run(args)
    json.dumps(res)  # JSON-serialisable as tki-bench stores it
    rows = {"torch", "ort-plain-fp32", "onnxruntime:fp32", "onnxruntime:int8"}
    if "openvino" in res["engines"]:
        rows |= {"openvino:fp32", "openvino:openvino_int8"}
    rows.add(f"plain-{res['auto']}")
    recs = {(r["backend"], r["batch_size"]) for r in res["records"]}
    assert recs == {(b, n) for b in rows for n in (2, 16)}
    assert res["auto"] in rows and sum(r["auto"] for r in res["records"]) == 2
    gflop = res["flops"]["gflop_per_image"]
    assert 0 < res["flops"]["activation_gflop"] < res["flops"]["weight_gflop"] < gflop
    peak = res["cpu"]["peak"]
    for r in res["records"]:
        assert r["images_per_s"] > 0 and r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
        same = [x for x in res["records"] if x["batch_size"] == r["batch_size"]]
        base = next(x for x in same if x["backend"] == "torch")
        plain = next(x for x in same if x["backend"] == "ort-plain-fp32")
        assert r["speedup_vs_torch"] == pytest.approx(r["images_per_s"] / base["images_per_s"])
        assert r["speedup_vs_plain_fp32"] == pytest.approx(r["images_per_s"] / plain["images_per_s"])
        pk = peak["int8_gops"] if r["precision"] == "int8" else peak["fp32_gflops"]
        assert r["fraction_of_peak"] == pytest.approx(gflop * r["images_per_s"] / pk)
        if ":" in r["backend"] and not r["backend"].startswith("plain-"):
            assert r["parity_min_cosine"] >= 0.99
    assert {"auto_vs_plain_fp32", "auto_vs_torch", "auto_of_fastest", "embedder_vs_plain", "int8_fraction_of_peak",
            "head_fraction"} == set(res["targets"])
    assert res["engine_choice"]["source"] == "measured" and res["auto"] in res["markdown"]
    share = res["head_share"]["onnxruntime_profile"]["fp32"]
    assert share["head_fraction"] > 0 and share["tail_nodes"] > 0
    assert sum(res["op_share"]["int8"].values()) == pytest.approx(1.0, abs=1e-3)
    assert "| engine:artifact" in res["markdown"] and all(p.endswith(".png") for p in res["plots"])


@pytest.mark.slow
def test_vit_b32_end_to_end_export(tmp_path, pacs_dir):
    from tki_sdk.cli.export import main
    from tki_sdk.export.fused import load_model

    calib = image_folder(tmp_path / "calib", pacs_dir, n=48)
    out = tmp_path / "vitb32"
    assert main(["--head", "none", "--model", "ViT-B-32", "--out", str(out), "--calib-images", str(calib),
                 "--calib-count", "32", "--no-progress"]) == 0
    md = ModelMetadata.load(out)
    assert set(md.artifacts) == {"fp32", "fp16", "int8"} and md.embedding_dim == 512
    assert md.artifacts["fp16"]["bytes"] < 0.6 * md.artifacts["fp32"]["bytes"]
    assert md.artifacts["int8"]["bytes"] < 0.35 * md.artifacts["fp32"]["bytes"]
    model = load_model(None, head="none", model_name="ViT-B-32")
    x = np.random.default_rng(7).standard_normal((3, 3, 224, 224)).astype(np.float32)
    ref = torch_float64(model, x)
    for key in ("fp32", "fp16", "int8"):
        y = OrtRunner(out / md.artifacts[key]["file"], threads=2).run(x)
        assert cosines(y, ref).min() >= THRESHOLDS[key], key


def test_export_timing_uses_the_same_interleaving():
    from tki_sdk.export import pipeline, validate

    assert throughput.measure_interleaved is validate.measure_interleaved
    order = []
    x = np.zeros((4, 1), dtype=np.float32)
    t = pipeline._time_interleaved({"a": lambda v: order.append(("a", v.shape)), "b": lambda v: order.append(("b", v.shape))},
                                   x, rounds=2)
    assert [k for k, _ in order] == ["a", "b"] * 3 and all(s == (4, 1) for _, s in order)
    assert {k: (v["rounds"], v["batch_size"]) for k, v in t.items()} == {"a": (2, 4), "b": (2, 4)}
    assert all(0 <= v["best_ms_per_image"] <= v["ms_per_image"] for v in t.values())
