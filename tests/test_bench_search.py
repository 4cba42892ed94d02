"""Search suite: exact top-k against a full sort, synthetic data, a tiny end-to-end run writing JSON + PNG."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("usearch")
pytest.importorskip("matplotlib")

from tki_sdk.benchmarks import cli, search  # noqa: E402
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
    code = cli.main([
        "search", "--quick", "--sizes", "1500", "--dim", "32", "--queries", "40", "--clusters", "20",
        "--dtypes", "f32,i8", "--expansion-search", "16,128", "--min-time", "0", "--exact-usearch-queries", "40",
        "--out-dir", str(tmp_path), "--no-progress", "--name", "tiny",
    ])
    assert code == 0
    doc = json.loads((tmp_path / "search" / "tiny.json").read_text())
    assert doc["suite"] == "search" and doc["name"] == "tiny"
    assert doc["machine"]["cpu_count"] >= 1 and "cpu_model" in doc["machine"]
    assert doc["versions"]["numpy"] == np.__version__ and doc["versions"]["usearch"]
    assert "commit" in doc["git"]
    (run,) = doc["results"]["runs"]
    assert run["n"] == 1500 and run["dim"] == 32
    # The exact path: usearch exact=True agrees with the numpy brute force.
    assert run["exact"]["usearch_recall"] == 1.0
    assert run["exact"]["numpy_qps"] > 0 and run["exact"]["usearch_qps"] > 0
    assert len(run["builds"]) == 2 and all(b["build_rate"] > 0 and b["memory_bytes"] > 0 for b in run["builds"])
    assert len(run["sweep"]) == 4
    for r in run["sweep"]:
        assert 0.0 <= r["recall"] <= 1.0 and r["qps"] > 0
        assert r["speedup_vs_exact"] == pytest.approx(r["qps"] / run["exact"]["best_qps"])
    f32 = {r["expansion_search"]: r["recall"] for r in run["sweep"] if r["dtype"] == "f32"}
    assert f32[128] >= 0.95  # ef 128 over 1500 vectors is close to exhaustive
    target = doc["results"]["target"]
    assert target["largest_n_run"] == 1500 and "1,000,000" in target["note"]
    png = tmp_path / "search" / "tiny.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    out = capsys.readouterr().out
    assert "HNSW sweep" in out and "tiny.json" in out


def test_real_vectors_from_npy(tmp_path):
    vecs = clustered_unit_vectors(800, 16, clusters=10, seed=1) * 3.0  # not unit: the suite normalises
    np.save(tmp_path / "emb.npy", vecs)
    code = cli.main([
        "search", "--vectors", str(tmp_path / "emb.npy"), "--queries", "30", "--dtypes", "f32",
        "--connectivity", "8", "--expansion-search", "64", "--min-time", "0", "--out-dir", str(tmp_path), "--no-progress",
    ])
    assert code == 0
    doc = json.loads((tmp_path / "search" / "real_emb.json").read_text())
    (run,) = doc["results"]["runs"]
    assert run["n"] == 770 and run["n_queries"] == 30
    assert doc["results"]["data"]["source"] == "file"


def test_bad_vectors_file(tmp_path, capsys):
    (tmp_path / "bad.npy").write_text("nope")
    assert cli.main(["search", "--vectors", str(tmp_path / "bad.npy"), "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.npy" in err[0]


def test_quick_defaults_are_small():
    assert max(search.QUICK_DEFAULTS["sizes"]) <= 50_000
    assert search.FULL_DEFAULTS["sizes"][-1] == search.TARGET_N
