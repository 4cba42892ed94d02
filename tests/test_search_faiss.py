"""FAISS and the Gallery agree with brute force on small data; autofaiss's sizing rules; the Pareto helpers."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("usearch")
faiss = pytest.importorskip("faiss")

from tki_sdk.benchmarks.search import exact_topk, pareto_frontier, qps_at_recall, recall_at_k  # noqa: E402
from tki_sdk.benchmarks.search_data import embedding_shaped_vectors  # noqa: E402
from tki_sdk.benchmarks.search_faiss import autofaiss_nlist, autofaiss_pq, build_faiss, faiss_specs  # noqa: E402
from tki_sdk.runtime.index.gallery import Gallery  # noqa: E402


@pytest.fixture(scope="module")
def data():
    base = embedding_shaped_vectors(4000, 64, seed=2)
    q = embedding_shaped_vectors(100, 64, seed=2, stream=1)
    full = q @ base.T
    truth = np.argsort(-full, axis=1, kind="stable")[:, :10]  # independent full sort
    return base, q, truth


def test_autofaiss_sizing_rules():
    assert autofaiss_nlist(100_000) == 1024 and autofaiss_nlist(10_000) == 512
    assert autofaiss_nlist(1_000_000) == 16_384
    # 40% of float32 at d=512: 819 bytes per vector -> PQ256 (264 bytes) is the first that fits
    assert autofaiss_pq(1_000_000, 512, 0.4 * 4 * 512 * 1_000_000) == 256
    assert autofaiss_pq(1_000_000, 512, 20e6) == 8  # 20 bytes per vector: PQ8 (16 bytes)
    specs = faiss_specs(1_000_000, 512, max_nlist=4096)
    assert [s["key"] for s in specs] == ["HNSW32,Flat", "IVF4096,Flat", "IVF4096,PQ256x8"]
    assert [s["kind"] for s in faiss_specs(5000, 64)] == ["faiss-hnsw", "faiss-ivf"]  # too few to train PQ
    assert "16384" in specs[1]["notes"][0]


@pytest.mark.parametrize("which", [0, 1, pytest.param(2, marks=pytest.mark.slow)])  # 2: PQ's k-means, 18 s
def test_faiss_indexes_agree_with_brute_force(data, which):
    base, q, truth = data
    spec = faiss_specs(12_000, base.shape[1])[which]  # the sizing of 12k vectors (PQ needs >= 9,984)
    base = embedding_shaped_vectors(12_000, 64, seed=2) if which == 2 else base
    truth = np.argsort(-(q @ base.T), axis=1, kind="stable")[:, :10] if which == 2 else truth
    b = build_faiss(spec, base, threads=1 if which == 2 else 2, expansion_add=64)  # PQ: tiny k-means, one thread
    b.set_param(spec["values"][-1])  # the widest search
    ids = b.search(q, 10)
    floor = {0: 0.99, 1: 0.999, 2: 0.6}[which]  # HNSW near-exhaustive, IVF all lists exact, PQ lossy
    assert recall_at_k(ids, truth, 10) >= floor
    assert b.memory_bytes > 0 and b.build_seconds > 0
    if which == 1:
        b.set_param(1)
        assert recall_at_k(b.search(q, 10), truth, 10) < recall_at_k(ids, truth, 10)  # nprobe matters


@pytest.mark.parametrize("dtype", ["f32", "f16", "i8"])
def test_gallery_agrees_with_brute_force(data, dtype):
    base, q, truth = data
    g = Gallery(64, dtype=dtype, connectivity=16, expansion_search=256, threads=2)
    g.add(np.arange(len(base)), base)
    keys, _ = g.search(q, 10)
    assert recall_at_k(keys.astype(np.int64), truth, 10) >= 0.98
    ids, _ = exact_topk(base, q, 10)
    assert recall_at_k(ids, truth, 10) == 1.0


def test_pareto_frontier_and_interpolation():
    pts = [(0.9, 1000.0), (0.95, 500.0), (0.93, 400.0), (0.99, 100.0), (0.999, 50.0)]
    assert pareto_frontier(pts) == [(0.9, 1000.0), (0.95, 500.0), (0.99, 100.0), (0.999, 50.0)]
    assert qps_at_recall(pts, 0.99) == pytest.approx(100.0)
    mid = qps_at_recall(pts, 0.97)
    assert mid == pytest.approx(np.sqrt(500.0 * 100.0))  # halfway in recall -> geometric mean
    assert qps_at_recall(pts, 0.9999) is None
    assert qps_at_recall([(0.995, 10.0), (0.999, 5.0)], 0.99) == 10.0
