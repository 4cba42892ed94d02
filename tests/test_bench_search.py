"""Search suite: exact top-k against a full sort, synthetic data, a tiny end-to-end run writing JSON + PNG."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("usearch")
pytest.importorskip("matplotlib")

from tki_sdk.cli import bench as cli  # noqa: E402
from tki_sdk.benchmarks.search import clustered_unit_vectors, exact_topk, recall_at_k  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_exact_topk_matches_full_sort():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((1000, 16)).astype(np.float32)
    q = rng.standard_normal((20, 16)).astype(np.float32)
    ids, scores = exact_topk(base, q, 10, chunk=128)  # several chunks, merged
    full = q @ base.T
    ref = np.argsort(-full, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(ids, ref)
    np.testing.assert_allclose(scores, np.take_along_axis(full, ref, axis=1), rtol=1e-5)


def test_recall_at_k():
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = np.array([[4, 3, 9, 1], [-1, -1, -1, -1]])  # 3/4 and 0/4 (sentinels never count)
    assert recall_at_k(found, truth, 4) == pytest.approx((3 / 4 + 0) / 2)
    assert recall_at_k(truth, truth, 4) == 1.0


def test_clustered_vectors_are_seeded_unit_and_clustered():
    a = clustered_unit_vectors(500, 32, clusters=5, seed=3)
    b = clustered_unit_vectors(500, 32, clusters=5, seed=3)
    q = clustered_unit_vectors(50, 32, clusters=5, seed=3, stream=1)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a[:50], q)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    # 5 clusters: a point's best match among the other points is far closer than a random pair.
    s = a @ a.T
    np.fill_diagonal(s, -1)
    assert s.max(axis=1).mean() > np.median(s) + 0.3


def test_tiny_run_writes_json_and_png(tmp_path, capsys):
    pytest.importorskip("faiss")
    code = cli.main([
        "search", "--quick", "--data", "clustered", "--sizes", "1500", "--dim", "32", "--queries", "40",
        "--clusters", "20", "--dtypes", "f32,i8,hnswlib", "--indexes", "gallery,faiss-hnsw,faiss-ivf",
        "--expansion-search", "16,128", "--min-time", "0", "--exact-usearch-queries", "40", "--filter-queries", "20",
        "--out-dir", str(tmp_path), "--no-progress", "--name", "tiny",
    ])
    assert code == 0
    doc = json.loads((tmp_path / "search" / "tiny.json").read_text())
    assert doc["suite"] == "search" and doc["name"] == "tiny"
    assert doc["machine"]["cpu_count"] >= 1 and "cpu_model" in doc["machine"]
    assert doc["versions"]["numpy"] == np.__version__ and doc["versions"]["usearch"] and doc["versions"]["faiss"]
    assert "commit" in doc["git"]
    (run,) = doc["results"]["runs"]
    assert run["n"] == 1500 and run["dim"] == 32 and run["data"]["data"] == "clustered"
    # The exact path: usearch exact=True agrees with the numpy brute force.
    assert run["exact"]["usearch_recall"] == 1.0 and run["exact"]["numpy_qps"] > 0
    names = [i["index"] for i in run["indexes"]]
    assert names[:3] == ["Gallery f32 M=16", "Gallery i8 + f16 re-rank M=16", "Gallery hnswlib f32 M=16"]
    assert names[3] == "faiss HNSW32" and names[4].startswith("faiss IVF") and names[4].endswith(",Flat")
    for rec in run["indexes"]:
        assert rec["build_rate"] > 0 and rec["memory_bytes"] > 0 and rec["file_bytes"] > 0
        assert len(rec["sweep"]) >= 2 and all(0.0 <= s["recall"] <= 1.0 and s["qps"] > 0 for s in rec["sweep"])
    # Gallery memory counts the structures as FAISS's are counted (serialised size): it matches the bytes the
    # saved gallery holds for them (npy headers and gallery.json aside), and i8 + its f16 copy needs
    # 32 + 2 * 32 + 8 bytes per vector where f32 needs 4 * 32 (graph links alike)
    g32, g8, hnswlib = run["indexes"][:3]
    for rec, parallel in ((g32, False), (g8, False), (hnswlib, True)):  # usearch reads one at a time
        p = rec["parallel_searches"]
        assert p["parallel_by_design"] is parallel and p["queries"] == 40 and p["threads"] == 8
        assert p["serial_seconds"] > 0 and p["concurrent_seconds"] > 0 and p["speedup"] > 0
    for rec in (g32, g8, hnswlib):
        assert abs(rec["memory_bytes"] - rec["file_bytes"]) < 0.01 * rec["file_bytes"]
        assert rec["allocated_bytes"] >= rec["memory_bytes"]
    assert g32["memory_bytes"] - g8["memory_bytes"] == pytest.approx(1500 * (128 - 104), rel=0.05)
    f32 = run["indexes"][0]
    for rec in (f32, hnswlib):
        assert {s["value"]: s["recall"] for s in rec["sweep"]}[128] >= 0.95  # ef 128 over 1500 vectors
    assert f32["tuned"]["method"] == "held-out" and f32["tuned"]["expansion_search"] >= 16
    assert [f["fraction"] for f in run["filters"]] == [0.01, 0.1, 0.5]
    assert all(f["recall"] >= 0.9 for f in run["filters"])
    at = {a["index"]: a for a in run["at_target"]}
    assert at["faiss HNSW32"]["vs_faiss_hnsw"] in (None, 1.0)
    assert any(g["goal"].startswith("filter matching 1%") for g in run["goals"])
    assert "1,000,000" in doc["results"]["target"]["note"]
    png = tmp_path / "search" / "tiny.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert not (tmp_path / "search" / "tiny.partial.json").exists()
    out = capsys.readouterr().out
    assert "Sweeps" in out and "tiny.json" in out and "Goals" in out and "Concurrent searches (one query per call" in out


def test_goals_are_the_designs_build_and_memory_against_faiss_and_every_filter():
    """ARCHITECTURE.md's Targets, search row: QPS at 0.99 >= FAISS HNSW32 and >= 30x exact, build rate >= FAISS HNSW32's
    (same run), memory <= FAISS HNSW32's float32, filtered recall >= 0.99 at 1%, 10% and 50%."""
    from tki_sdk.benchmarks.search import evaluate_goals

    gib = 2**30
    run_ = {
        "indexes": [{"index": "G", "kind": "gallery", "dtype": "f32", "backend": "faiss", "build_rate": 1900.0,
                     "memory_bytes": 2.1 * gib},
                    {"index": "F", "kind": "faiss-hnsw", "build_rate": 1800.0, "memory_bytes": 2.0 * gib}],
        "at_target": [{"index": "G", "qps": 1900.0, "max_recall": 0.998, "vs_faiss_hnsw": 1.01, "vs_exact": 29.0},
                      {"index": "F", "qps": 1880.0, "max_recall": 0.998, "vs_faiss_hnsw": 1.0, "vs_exact": 28.7}],
        "filters": [{"fraction": 0.01, "recall": 0.999}, {"fraction": 0.1, "recall": 0.992},
                    {"fraction": 0.5, "recall": 0.985}],
    }
    goals = {g["goal"]: g for g in evaluate_goals(run_)}
    met = {k: g["met"] for k, g in goals.items()}
    assert met["G: QPS at recall 0.99 >= FAISS HNSW"]
    assert not met["G: QPS at recall 0.99 >= 30x exact"]
    assert met["G: build rate >= FAISS HNSW's"]
    assert not met["G: memory <= FAISS HNSW's"] and "5%" in goals["G: memory <= FAISS HNSW's"]["shortfall"]
    assert met["filter matching 1%: recall@10 >= 0.99 vs exact filtered"]
    assert met["filter matching 10%: recall@10 >= 0.99 vs exact filtered"]
    assert not met["filter matching 50%: recall@10 >= 0.99 vs exact filtered"]
    run_["indexes"][0]["build_rate"] = 1700.0
    assert not {g["goal"]: g["met"] for g in evaluate_goals(run_)}["G: build rate >= FAISS HNSW's"]
