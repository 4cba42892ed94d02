"""The shared plotting functions write real PNGs from the record formats their docstrings define."""
from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")

from tki_sdk.benchmarks.plots import plot_grouped_bars, plot_latency, plot_recall_qps, plot_throughput  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")  # IHDR width, height


def test_throughput_and_latency(tmp_path):
    recs = [{"backend": b, "batch_size": n, "images_per_s": v * n ** 0.5, "p50_ms": 1.0 * n, "p95_ms": 1.3 * n, "p99_ms": 1.6 * n}
            for b, v in [("torch", 10.0), ("ort-fp32", 20.0), ("ort-int8", 50.0)] for n in (1, 8, 32)]
    w, h = _png_size(plot_throughput(recs, tmp_path / "sub" / "tp.png"))
    assert w > 300 and h > 200
    w3, _ = _png_size(plot_latency(recs, tmp_path / "lat.png"))
    w1, _ = _png_size(plot_latency([r for r in recs if r["batch_size"] == 1], tmp_path / "lat1.png"))
    assert w3 > w1  # one panel per batch size
    with pytest.raises(ValueError):
        plot_throughput([], tmp_path / "x.png")


def test_recall_qps_and_bars(tmp_path):
    recs = [{"n": n, "dtype": d, "connectivity": 16, "expansion_search": ef, "recall": min(1.0, 0.7 + ef / 500), "qps": 1e5 / ef}
            for n in (1000, 5000) for d in ("f32", "i8") for ef in (16, 64, 256)]
    w2, _ = _png_size(plot_recall_qps(recs, tmp_path / "rq.png", exact_qps={1000: 100.0, 5000: 20.0}))
    w1, _ = _png_size(plot_recall_qps([r for r in recs if r["n"] == 1000], tmp_path / "rq1.png"))
    assert w2 > w1
    _png_size(plot_grouped_bars(["a->b", "b->a"], {"m1": [1.0, 2.0], "m2": [2.0, 1.0]}, tmp_path / "bars.png"))
    with pytest.raises(ValueError):
        plot_grouped_bars(["a"], {"m1": [1.0, 2.0]}, tmp_path / "bad.png")
