"""Filtered search at scale: ``where`` filters matching a chosen fraction of the gallery, against exact
filtered search.

Every item gets metadata ``{"slice": s}`` with ``s`` uniform in 0..99 (seeded, independent of the vectors);
the filter for fraction ``f`` is ``where={"slice": [0, 1, ..., 100 f - 1]}``. The reference is the exact
top-k (numpy brute force, inner product on unit vectors) among the matching items only; recall@k of the
Gallery's filtered search is measured against it, and its QPS with the same threads as everything else.
The row also says which path the Gallery took (``exact subset`` when at most ``filter_exact_limit`` items
match, else ``over-fetch`` with its exact fallback; see :mod:`tki_sdk.runtime.index.gallery`).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["SLICES", "filter_metadata", "item_slices", "measure_filters", "where_for"]

SLICES = 100


def item_slices(n: int, seed: int = 0) -> np.ndarray:
    """The slice (0..99) of each of ``n`` items."""
    return np.random.default_rng([seed, 424242]).integers(0, SLICES, n).astype(np.int64)


def filter_metadata(slices: np.ndarray) -> list[dict[str, int]]:
    """Metadata dicts for ``Gallery.add``."""
    return [{"slice": int(s)} for s in slices]


def where_for(fraction: float) -> dict[str, list[int]]:
    """The ``where`` filter matching ``fraction`` of the items (a multiple of 1%)."""
    m = int(round(fraction * SLICES))
    if not 1 <= m <= SLICES:
        raise ValueError(f"filter fraction {fraction} must be between 0.01 and 1")
    return {"slice": list(range(m))}


def measure_filters(gallery: Any, base: np.ndarray, queries: np.ndarray, slices: np.ndarray,
                    fractions: Sequence[float], k: int, measure: Callable[..., dict[str, Any]],
                    exact_topk: Callable[..., tuple[np.ndarray, np.ndarray]]) -> list[dict[str, Any]]:
    """One row per fraction: matches, the path taken, recall@k against exact filtered search, QPS.

    ``measure(search_fn, truth) -> {"recall", "qps", ...}`` times ``search_fn()`` and scores its ids;
    ``exact_topk(base, queries, k)`` is the brute-force reference. Gallery keys must be row numbers."""
    rows = []
    for f in fractions:
        where = where_for(f)
        rows_match = np.flatnonzero(slices < len(where["slice"]))
        truth_local, _ = exact_topk(base[rows_match], queries, k)
        truth = rows_match[truth_local]
        path = "exact subset" if rows_match.size <= gallery.filter_exact_limit else "over-fetch"

        def search(w: dict[str, Any] = where) -> np.ndarray:
            keys, _ = gallery.search(queries, k, where=w)
            out = keys.astype(np.int64)
            out[keys == np.iinfo(np.uint64).max] = -1
            return out

        res = measure(search, truth)
        rows.append({"fraction": float(f), "matches": int(rows_match.size), "path": path,
                     "expansion_search": int(gallery.expansion_search), **res})
    return rows
