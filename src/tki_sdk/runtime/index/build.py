"""Building a self-tuned gallery: add vectors with a held-out sample, tune on it, and (where cheap) choose
``connectivity`` by building more than one graph.

* ``held-out`` (:func:`add_tuned`): a random sample of the vectors being added is kept out of the graph,
  the rest is added (multi-threaded, with a progress bar), ``expansion_search`` is chosen on the sample
  against the exact neighbours among the added **float32 vectors as given** (so f16 / i8 galleries are tuned
  for recall against the unquantised data), and then the sample is added too. These are true held-out
  queries.
* :func:`choose_connectivity`: :func:`add_tuned` for each candidate M, keeping the fastest that reaches the
  target.

``Gallery.tune`` covers a finished gallery (leave-one-out or given queries); the sweep itself is
:func:`tki_sdk.runtime.index.tuning.choose_expansion_search`.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from tki_sdk.common.index_config import IndexConfig
from tki_sdk.common.progress import progress_bar
from tki_sdk.runtime.index.gallery import Gallery
from tki_sdk.runtime.index.tuning import DEFAULT_CANDIDATES, TuningResult, exact_neighbours_of

__all__ = ["add_tuned", "choose_connectivity"]


def _chunked_add(gallery: Gallery, keys: np.ndarray, vectors: np.ndarray, metadata: Sequence[Any] | None,
                 rows: np.ndarray, progress: Any, chunk: int) -> None:
    with progress_bar(rows.size, progress if isinstance(progress, str) else "add", unit="vec",
                      enabled=bool(progress)) as bar:
        for s in range(0, rows.size, chunk):
            r = rows[s : s + chunk]
            gallery.add(keys[r], vectors[r], None if metadata is None else [metadata[i] for i in r])
            bar.update(r.size)


def add_tuned(gallery: Gallery, keys: Sequence[int] | np.ndarray | None, vectors: np.ndarray,
              metadata: Sequence[Mapping[str, Any] | None] | None = None, *, target_recall: float = IndexConfig.target_recall,
              holdout: int = 500, k: int = 10, candidates: Sequence[int] = DEFAULT_CANDIDATES, seed: int = 0,
              progress: Any = False, chunk: int = 50_000) -> TuningResult | None:
    """Add ``vectors`` (all cores: usearch's multi-threaded add, ``chunk`` rows per call, progress shown when
    ``progress``, :mod:`tki_sdk.common.progress`) and tune on ``holdout`` of them held out of the graph until tuning is done (module
    docstring). Returns the :class:`TuningResult` (``None`` for exact galleries, which are only filled)."""
    vecs = np.asarray(vectors, dtype=np.float32)
    n = vecs.shape[0]
    if keys is None:
        existing = gallery.keys()
        start = int(existing.max()) + 1 if existing.size else 0
        keys = np.arange(start, start + n, dtype=np.uint64)
    keys = np.asarray(keys, dtype=np.uint64)
    everything = np.arange(n)
    if gallery.exact or n < 4:
        _chunked_add(gallery, keys, vecs, metadata, everything, progress, chunk)
        return None if gallery.exact else gallery.tune(target_recall, k=k, candidates=candidates, seed=seed)
    rng = np.random.default_rng(seed)
    held = np.sort(rng.choice(n, size=min(int(holdout), max(1, n // 10)), replace=False))
    rest = np.setdiff1d(everything, held, assume_unique=True)
    _chunked_add(gallery, keys, vecs, metadata, rest, progress, chunk)
    # the reference: the float32 vectors as given (what f16 / i8 storage approximates), not the stored copies
    t0 = time.perf_counter()
    k_eff = min(int(k), rest.size)
    truth = exact_neighbours_of(vecs[rest], keys[rest], vecs[held], k_eff, gallery.metric)
    result = gallery.tune(target_recall, vecs[held], k=k_eff, candidates=candidates, truth=truth,
                          truth_seconds=time.perf_counter() - t0, method="held-out")
    _chunked_add(gallery, keys, vecs, metadata, held, False, chunk)
    return result


def choose_connectivity(make_gallery: Callable[[int | None], Gallery], vectors: np.ndarray,
                        keys: np.ndarray | None = None, metadata: Sequence[Mapping[str, Any] | None] | None = None, *,
                        connectivity: Sequence[int] | None = None, max_items: int = 100_000,
                        target_recall: float = IndexConfig.target_recall, holdout: int = 500, k: int = 10, seed: int = 0,
                        progress: Any = False) -> tuple[Gallery, TuningResult | None, list[dict[str, Any]]]:
    """Build ``make_gallery(M)`` for each ``connectivity`` (only the first when more than ``max_items``
    vectors: rebuilding is then not cheap), tune each with :func:`add_tuned`, and keep the one that answers
    the held-out queries fastest among those reaching the target (else the one with the best recall).
    ``connectivity=None``: the backend's own M and twice it (``make_gallery(None)`` is built first and
    gives M: ``IndexConfig.for_backend``).
    Returns ``(gallery, its TuningResult, [{connectivity, expansion_search, recall, qps}] per candidate)``."""
    vecs = np.asarray(vectors, dtype=np.float32)
    first = make_gallery(None) if connectivity is None else None
    if first is not None:
        connectivity = (first.connectivity, 2 * first.connectivity)
    tried = list(connectivity) if vecs.shape[0] <= max_items else list(connectivity)[:1]
    best: tuple[Gallery, TuningResult | None, Any] | None = None
    report: list[dict[str, Any]] = []
    rng = np.random.default_rng([seed, 1])
    probe = vecs[rng.choice(vecs.shape[0], size=min(500, vecs.shape[0]), replace=False)]
    for i, m in enumerate(tried):
        g = first if i == 0 and first is not None else make_gallery(int(m))
        res = add_tuned(g, keys, vecs, metadata, target_recall=target_recall, holdout=holdout, k=k, seed=seed,
                        progress=progress)
        t0 = time.perf_counter()
        g.search(probe, k)
        qps = probe.shape[0] / max(time.perf_counter() - t0, 1e-9)
        ok = res is None or res.reached
        score = (ok, qps if ok else (res.recall_estimate if res else 1.0))
        report.append({"connectivity": int(m), "expansion_search": g.expansion_search, "qps": qps,
                       "recall": None if res is None else res.recall_estimate, "reached": ok})
        if best is None or score > best[2]:
            best = (g, res, score)
    assert best is not None
    g, res = best[0], best[1]
    if g.tuned is not None:
        g.tuned = {**g.tuned, "connectivity_tried": report}
    return g, res, report
