"""The budget preset of ``tki-bench gpu`` rehearsed on the CPU (``--dry-run``), end to end from a checkpoint.

What runs on the GPU machine is the same code with ``--device cuda``: this proves, before any device time is
spent, that the preset loads the fused model from a checkpoint alone (no export folder), checks parity of
each path against the float64 model and of fp16 against fp32, times every row, writes JSON + two PNGs under
the given ``--out-dir`` (``$OUT`` there), and records on every row what actually ran it; paths that need CUDA
(the CUDA graph) are skipped with their reason, never run elsewhere under their name.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tki_sdk.cli import bench as cli


def _run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_budget_dry_run_end_to_end_from_a_checkpoint(tiny_checkpoint, pacs_dir, tmp_path, capsys):
    out_dir = tmp_path / "OUT"
    code, out, err = _run(["gpu", "--preset", "budget", "--dry-run", "--checkpoint", str(tiny_checkpoint),
                           "--dataset-dir", str(pacs_dir), "--batch-sizes", "1,4", "--seconds", "0.02",
                           "--out-dir", str(out_dir), "--no-progress"], capsys)
    assert code == 0, err
    doc = json.loads((out_dir / "gpu" / "budget-dry-run.json").read_text())
    res = doc["results"]
    assert res["settings"]["preset"] == "budget" and res["settings"]["device"] == "cpu"
    assert res["model"]["export_dir"] is None  # no export folder was needed
    rows = {(r["backend"], r["batch_size"]): r for r in res["throughput"]}
    assert set(rows) == {(b, n) for b in ("torch-fp32", "torch-fp16") for n in (1, 4)}
    for r in rows.values():
        assert r["provider"] == "torch:cpu" and r["images_per_s"] > 0 and r["p50_ms"] <= r["p99_ms"]
    assert res["skipped"]["torch-fp16-cudagraph"].startswith("needs a CUDA device")
    assert not any(b.startswith("ort-") or b.startswith("tensorrt") for b, _ in rows)
    # parity against the float64 model: fp32 to 1e-5, fp16 to 1e-3; fp16 against fp32 on the same rows
    assert res["parity"]["torch-fp32"]["pass"] and res["parity"]["torch-fp32"]["min_cosine"] > 0.99999
    assert res["parity"]["torch-fp16"]["pass"] and res["parity"]["torch-fp16"]["min_cosine"] > 0.999
    vs = res["parity_vs_torch_fp32"]["torch-fp16"]
    assert vs["rows"] == res["settings"]["parity_images"] + res["settings"]["parity_random"]
    assert 0.999 < vs["min_cosine"] <= vs["mean_cosine"] <= 1.0 + 1e-9
    for p in res["plots"]:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size[0] > 100
    assert "ran on" in out and "torch:cpu" in out


def test_parity_vs_matches_numpy():
    rng = np.random.default_rng(0)
    a = {"x": rng.standard_normal((5, 8)), "y": rng.standard_normal((3, 8))}
    b = {k: v + 0.01 * rng.standard_normal(v.shape) for k, v in a.items()}
    from tki_sdk.benchmarks.gpu_throughput import parity_vs

    got = parity_vs(a, b)
    ref = [float(u @ v / np.linalg.norm(u) / np.linalg.norm(v)) for k in a for u, v in zip(a[k], b[k])]
    assert got["rows"] == 8 and got["min_cosine"] == pytest.approx(min(ref), abs=1e-12)
    assert got["mean_cosine"] == pytest.approx(np.mean(ref), abs=1e-12)
    assert got["max_abs_error"] == pytest.approx(max(np.abs(a[k] - b[k]).max() for k in a))


@pytest.mark.parametrize("argv, needle", [
    (["--preset", "budget"], "pass --checkpoint"),
    (["--backends", "torch-fp32,ort-fp32-cuda", "--checkpoint", "ck"], "ort-fp32-cuda run exported artifacts"),
    (["--backends", "torch-fp99", "--checkpoint", "ck"], "unknown backend"),
])
def test_bad_combinations_are_one_line_usage_errors(argv, needle, tmp_path, capsys):
    code, _, err = _run(["gpu", "--dry-run", "--out-dir", str(tmp_path), *argv], capsys)
    lines = err.strip().splitlines()
    assert code == cli.EXIT_USAGE and len(lines) == 1 and needle in lines[0], lines
    assert not list(tmp_path.rglob("*.json"))
