"""Self-tuning HNSW galleries: choose ``expansion_search`` (and, where cheap, ``connectivity``) for a target
recall, from queries whose exact neighbours are known.

Recall of one query: ``|found top-k  intersect  exact top-k| / k``; the estimate is the mean over the
tuning queries, and its lower bound ``mean - 1.96 * std / sqrt(Q)`` (a normal 95% bound). The chosen
``expansion_search`` is the smallest candidate whose **lower bound** reaches the target (so that fresh queries
from the same distribution reach it too); when none does, the largest candidate is kept and the record
says ``reached: false``.

The exact reference is brute force (numpy, float32) with the gallery's metric (``cos``/``ip``: ``1 - q.v`` on
unit / raw vectors, ``l2sq``: ``|q - v|^2``): when building, over the float32 vectors as given to ``add``
(so f16 / i8 galleries are tuned for recall against the unquantised data); on a finished gallery, over
what it stores, read back with ``Gallery.get_vectors`` (dequantised, or the float16 re-ranking copy).

Where the queries come from:

* ``held-out`` (:func:`add_tuned`, used when building): a random sample of the vectors being added is kept
  out of the graph, the rest is added (multi-threaded, with a progress bar), the sample is tuned on against
  the exact neighbours among the added vectors, and then added too. These are true held-out queries.
* ``leave-one-out`` (:func:`tune` on a finished gallery without ``queries``): a random sample of stored
  vectors is searched for ``k + 1`` neighbours and each query's own key is dropped from both the result and
  the reference. The query sits in the graph, which makes its neighbourhood easier to reach than a fresh
  query's: the estimate is slightly optimistic (the search suite measures by how much).
* ``given``: ``tune(gallery, queries=...)`` with the caller's own query vectors.

The choice is stored on the gallery (``expansion_search``, and the ``tuned`` record that ``gallery.json``
keeps, see :class:`tki_sdk.common.gallery_manifest.GalleryManifest`), so loading the gallery searches with it.
See ARCHITECTURE.md ("Where each concept lives").
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

__all__ = ["DEFAULT_CANDIDATES", "TuningResult", "add_tuned", "choose_connectivity", "exact_neighbours",
           "exact_neighbours_of", "tune"]

#: ``expansion_search`` values tried, smallest first.
DEFAULT_CANDIDATES: tuple[int, ...] = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
_MISSING = np.uint64(np.iinfo(np.uint64).max)  # the gallery's padding key


@dataclass
class TuningResult:
    """What tuning chose and measured (``record()`` is what ``gallery.json`` keeps under ``tuned``)."""

    target_recall: float
    recall_estimate: float
    recall_lower_bound: float
    expansion_search: int
    connectivity: int
    k: int
    queries: int
    method: str
    reached: bool
    curve: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0

    def record(self) -> dict[str, Any]:
        d = asdict(self)
        d["curve"] = [[int(e), round(float(r), 5)] for e, r in self.curve]
        for key in ("recall_estimate", "recall_lower_bound", "seconds"):
            d[key] = round(float(d[key]), 5)
        return d


# ------------------------------------------------------------------------------------------ reference
def _scores(q: np.ndarray, v: np.ndarray, metric: str) -> np.ndarray:
    """Distances ``[Q, m]`` (smaller is closer) in the gallery's metric, float32."""
    dot = q @ v.T
    if metric == "l2sq":
        return (np.sum(q * q, axis=1)[:, None] - 2.0 * dot + np.sum(v * v, axis=1)[None, :]).astype(np.float32)
    return (1.0 - dot).astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)


def exact_neighbours(gallery: Any, queries: np.ndarray, k: int, *, exclude: np.ndarray | None = None,
                     chunk: int = 65_536) -> np.ndarray:
    """Exact top-``k`` keys ``[Q, k]`` (uint64, best first) of ``queries`` among the gallery's stored vectors
    (as stored: dequantised f16 / i8, or the float16 re-ranking copy), by brute force; ``exclude[i]`` (a key)
    is left out of query ``i``'s answer. Queries are normalised for ``cos`` galleries, as search does."""
    keys = np.sort(gallery.keys())
    chunks = ((keys[s : s + chunk], gallery.get_vectors(keys[s : s + chunk])) for s in range(0, keys.size, chunk))
    return _topk(queries, chunks, gallery.metric, k, exclude)


def exact_neighbours_of(vectors: np.ndarray, keys: np.ndarray, queries: np.ndarray, k: int, metric: str,
                        chunk: int = 65_536) -> np.ndarray:
    """Exact top-``k`` keys among ``vectors`` (float32, as given to ``add``; normalised here for ``cos``)."""
    def chunks():
        for s in range(0, len(keys), chunk):
            v = vectors[s : s + chunk]
            yield keys[s : s + chunk], (_unit(v) if metric == "cos" else np.asarray(v, dtype=np.float32))
    return _topk(queries, chunks(), metric, k, None)


def _topk(queries: np.ndarray, chunks: Any, metric: str, k: int, exclude: np.ndarray | None) -> np.ndarray:
    q = _unit(queries) if metric == "cos" else np.ascontiguousarray(queries, dtype=np.float32)
    nq = q.shape[0]
    best_d = np.full((nq, 0), np.inf, dtype=np.float32)
    best_k = np.zeros((nq, 0), dtype=np.uint64)
    for ck, cv in chunks:
        ck = np.asarray(ck, dtype=np.uint64)
        d = _scores(q, cv, metric)
        if exclude is not None:
            d[ck[None, :] == np.asarray(exclude, dtype=np.uint64)[:, None]] = np.inf
        kk = min(k, d.shape[1])
        part = np.argpartition(d, kk - 1, axis=1)[:, :kk]
        cand_d = np.concatenate([best_d, np.take_along_axis(d, part, 1)], axis=1)
        cand_k = np.concatenate([best_k, ck[part]], axis=1)
        order = np.argsort(cand_d, axis=1, kind="stable")[:, :k]
        best_d, best_k = np.take_along_axis(cand_d, order, 1), np.take_along_axis(cand_k, order, 1)
    return best_k


def _per_query_recall(found: np.ndarray, truth: np.ndarray, k: int) -> np.ndarray:
    f, t = found[:, :k], truth[:, :k]
    hit = (f[:, :, None] == t[:, None, :]) & (f[:, :, None] != _MISSING)
    return hit.any(axis=2).sum(axis=1) / float(min(k, t.shape[1]) or 1)


def _drop_self(found: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """Rows of ``k + 1`` keys without the query's own key, cut to ``k``."""
    out = np.full((found.shape[0], k), _MISSING, dtype=np.uint64)
    for i in range(found.shape[0]):
        row = found[i][found[i] != own[i]]
        out[i, : min(k, row.size)] = row[:k]
    return out


# ------------------------------------------------------------------------------------------ tuning
def _sweep(gallery: Any, q: np.ndarray, truth: np.ndarray, k: int, target: float, candidates: Sequence[int],
           own: np.ndarray | None) -> tuple[int, float, float, bool, list[tuple[int, float]]]:
    curve: list[tuple[int, float]] = []
    chosen = None
    for ef in sorted(int(c) for c in candidates):
        gallery.expansion_search = ef
        found, _ = gallery.search(q, k + (own is not None))
        if own is not None:
            found = _drop_self(found, own, k)
        r = _per_query_recall(found, truth, k)
        mean = float(r.mean())
        lower = mean - 1.96 * float(r.std(ddof=1) if r.size > 1 else 0.0) / math.sqrt(max(1, r.size))
        curve.append((ef, mean))
        chosen = (ef, mean, lower)
        if lower >= target:
            return ef, mean, lower, True, curve
    assert chosen is not None
    return chosen[0], chosen[1], chosen[2], False, curve


def tune(gallery: Any, target_recall: float = 0.99, queries: np.ndarray | None = None, *, sample: int = 500,
         k: int = 10, candidates: Sequence[int] = DEFAULT_CANDIDATES, seed: int = 0,
         truth: np.ndarray | None = None, _method: str | None = None) -> TuningResult:
    """Choose the gallery's ``expansion_search`` for ``target_recall`` (recall@``k``) and store the choice
    (``gallery.expansion_search`` and ``gallery.tuned``). ``queries``: held-out query vectors; without them
    ``sample`` stored vectors are used leave-one-out (module docstring). ``truth``: their exact top-``k`` keys
    when known (e.g. from the float32 vectors before quantisation); else brute force over the stored
    vectors. Exact galleries need no tuning (``ValueError``)."""
    if gallery.exact:
        raise ValueError("exact galleries are searched by brute force; there is nothing to tune")
    if not 0.0 < float(target_recall) <= 1.0:
        raise ValueError("target_recall must be in (0, 1]")
    if len(gallery) < 2:
        raise ValueError("tuning needs a gallery of at least 2 items")
    t0 = time.perf_counter()
    own = None
    if queries is None:
        keys = gallery.keys()
        rng = np.random.default_rng(seed)
        own = np.sort(rng.choice(keys, size=min(int(sample), keys.size), replace=False)).astype(np.uint64)
        q = gallery.get_vectors(own)
        method = "leave-one-out"
    else:
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != gallery.ndim or q.shape[0] < 1:
            raise ValueError(f"queries must be [Q, {gallery.ndim}] with Q >= 1")
        method = _method or "given"
    k = min(int(k), len(gallery) - (own is not None))
    if truth is None:
        truth = exact_neighbours(gallery, q, k, exclude=own)
    ef, mean, lower, reached, curve = _sweep(gallery, q, truth, k, float(target_recall), candidates, own)
    gallery.expansion_search = ef
    result = TuningResult(target_recall=float(target_recall), recall_estimate=mean, recall_lower_bound=lower,
                          expansion_search=ef, connectivity=int(gallery.connectivity), k=k, queries=int(q.shape[0]),
                          method=method, reached=reached, curve=curve, seconds=time.perf_counter() - t0)
    gallery.tuned = result.record()
    return result


def _chunked_add(gallery: Any, keys: np.ndarray, vectors: np.ndarray, metadata: Sequence[Any] | None,
                 rows: np.ndarray, progress: Any, chunk: int) -> None:
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=rows.size, desc=progress if isinstance(progress, str) else "add", unit="vec")
    try:
        for s in range(0, rows.size, chunk):
            r = rows[s : s + chunk]
            gallery.add(keys[r], vectors[r], None if metadata is None else [metadata[i] for i in r])
            if bar is not None:
                bar.update(r.size)
    finally:
        if bar is not None:
            bar.close()


def add_tuned(gallery: Any, keys: Sequence[int] | np.ndarray | None, vectors: np.ndarray,
              metadata: Sequence[Mapping[str, Any] | None] | None = None, *, target_recall: float = 0.99,
              holdout: int = 500, k: int = 10, candidates: Sequence[int] = DEFAULT_CANDIDATES, seed: int = 0,
              progress: Any = False, chunk: int = 50_000) -> TuningResult | None:
    """Add ``vectors`` (all cores: usearch's multi-threaded add, ``chunk`` rows per call, a tqdm bar when
    ``progress``) and tune on ``holdout`` of them held out of the graph until tuning is done (module
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
        return None if gallery.exact else tune(gallery, target_recall, k=k, candidates=candidates, seed=seed)
    rng = np.random.default_rng(seed)
    held = np.sort(rng.choice(n, size=min(int(holdout), max(1, n // 10)), replace=False))
    rest = np.setdiff1d(everything, held, assume_unique=True)
    _chunked_add(gallery, keys, vecs, metadata, rest, progress, chunk)
    # the reference: the float32 vectors as given (what f16 / i8 storage approximates), not the stored copies
    k_eff = min(int(k), rest.size)
    truth = exact_neighbours_of(vecs[rest], keys[rest], vecs[held], k_eff, gallery.metric)
    result = tune(gallery, target_recall, vecs[held], k=k_eff, candidates=candidates, seed=seed, truth=truth,
                  _method="held-out")
    _chunked_add(gallery, keys, vecs, metadata, held, False, chunk)
    return result


def choose_connectivity(make_gallery: Callable[[int], Any], vectors: np.ndarray, keys: np.ndarray | None = None,
                        metadata: Sequence[Mapping[str, Any] | None] | None = None, *,
                        connectivity: Sequence[int] = (16, 32), max_items: int = 100_000,
                        target_recall: float = 0.99, holdout: int = 500, k: int = 10, seed: int = 0,
                        progress: Any = False) -> tuple[Any, TuningResult | None, list[dict[str, Any]]]:
    """Build ``make_gallery(M)`` for each ``connectivity`` (only the first when more than ``max_items``
    vectors: rebuilding is then not cheap), tune each with :func:`add_tuned`, and keep the one that answers
    the held-out queries fastest among those reaching the target (else the one with the best recall).
    Returns ``(gallery, its TuningResult, [{connectivity, expansion_search, recall, qps}] per candidate)``."""
    vecs = np.asarray(vectors, dtype=np.float32)
    tried = list(connectivity) if vecs.shape[0] <= max_items else list(connectivity)[:1]
    best: tuple[Any, TuningResult | None, Any] | None = None
    report: list[dict[str, Any]] = []
    rng = np.random.default_rng([seed, 1])
    probe = vecs[rng.choice(vecs.shape[0], size=min(500, vecs.shape[0]), replace=False)]
    for m in tried:
        g = make_gallery(int(m))
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
