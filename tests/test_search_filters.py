"""Filtered search against exact filtered search (numpy brute force over the matching items), both paths."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("usearch")

from tki_sdk.benchmarks.search import _measure, exact_topk, recall_at_k  # noqa: E402
from tki_sdk.benchmarks.search_data import embedding_shaped_vectors  # noqa: E402
from tki_sdk.benchmarks.search_filters import filter_metadata, item_slices, measure_filters, where_for  # noqa: E402
from tki_sdk.runtime.index.gallery import Gallery  # noqa: E402
from tki_sdk.runtime.index.backends import BACKENDS  # noqa: E402


@pytest.fixture(scope="module")
def setup():
    base = embedding_shaped_vectors(5000, 48, seed=4)
    q = embedding_shaped_vectors(60, 48, seed=4, stream=1)
    slices = item_slices(len(base), seed=4)
    return base, q, slices


def test_slices_and_where():
    s = item_slices(100_000)
    assert abs(np.mean(s < 1) - 0.01) < 0.002 and abs(np.mean(s < 50) - 0.5) < 0.01
    assert where_for(0.1) == {"slice": list(range(10))}
    with pytest.raises(ValueError):
        where_for(0.001)


@pytest.mark.parametrize("index", BACKENDS)
@pytest.mark.parametrize("exact_limit", [0, 50_000])  # 0: every filter takes the over-fetch path
def test_filtered_search_matches_exact_filtered(setup, exact_limit, index):
    base, q, slices = setup
    g = Gallery(48, connectivity=16, expansion_search=128, threads=2, filter_exact_limit=exact_limit, index=index)
    g.add(np.arange(len(base)), base, filter_metadata(slices))
    rows = measure_filters(g, base, q, slices, [0.01, 0.1, 0.5], 10,
                           lambda fn, tr: _measure(fn, tr, 10, 0.0), exact_topk)
    assert [r["matches"] for r in rows] == [int(np.sum(slices < m)) for m in (1, 10, 50)]
    for r in rows:
        assert r["path"] == ("exact subset" if r["matches"] <= exact_limit else "over-fetch")
        assert r["recall"] >= (1.0 if r["path"] == "exact subset" else 0.95)
    # independent check of the reference itself for the 10% filter: full sort over the matching rows
    match = np.flatnonzero(slices < 10)
    ref = match[np.argsort(-(q @ base[match].T), axis=1, kind="stable")[:, :10]]
    keys, _ = g.search(q, 10, where=where_for(0.1))
    assert set(keys.reshape(-1).tolist()) <= set(match.tolist())  # every hit satisfies the filter
    assert recall_at_k(keys.astype(np.int64), ref, 10) >= 0.95
