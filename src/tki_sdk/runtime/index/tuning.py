"""Self-tuning HNSW search: choose ``expansion_search`` for a target recall, from queries whose exact
neighbours are known.

Recall of one query: ``|found top-k  intersect  exact top-k| / k``; the estimate is the mean over the
tuning queries, and its lower bound ``mean - 1.96 * std / sqrt(Q)`` (a normal 95% bound). The chosen
``expansion_search`` is the smallest candidate whose **lower bound** reaches the target (so that fresh queries
from the same distribution reach it too); when none does, the largest candidate is kept and the record
says ``reached: false``.

The exact reference is brute force (numpy, float32) with the gallery's metric (``cos``/``ip``: ``1 - q.v`` on
unit / raw vectors, ``l2sq``: ``|q - v|^2``).

This module is pure: :func:`choose_expansion_search` takes a search function (:class:`SearchAt`) and
returns a :class:`TuningResult`; it never holds a gallery. ``Gallery.tune`` (leave-one-out or given
queries) and :mod:`.build` (held-out queries while building) call it and store the choice themselves
(``expansion_search`` and the ``tuned`` record of ``gallery.json``).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Protocol, Sequence

import numpy as np

from tki_sdk.common.index_config import IndexConfig

__all__ = ["DEFAULT_CANDIDATES", "SearchAt", "TuningResult", "choose_expansion_search", "exact_topk",
           "exact_neighbours_of"]

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


def exact_neighbours_of(vectors: np.ndarray, keys: np.ndarray, queries: np.ndarray, k: int, metric: str,
                        chunk: int = 65_536) -> np.ndarray:
    """Exact top-``k`` keys among ``vectors`` (float32, as given to ``add``; normalised here for ``cos``)."""
    def chunks():
        for s in range(0, len(keys), chunk):
            v = vectors[s : s + chunk]
            yield keys[s : s + chunk], (_unit(v) if metric == "cos" else np.asarray(v, dtype=np.float32))
    return exact_topk(queries, chunks(), metric, k, None)


def exact_topk(queries: np.ndarray, chunks: Iterable[tuple[np.ndarray, np.ndarray]], metric: str, k: int,
               exclude: np.ndarray | None = None) -> np.ndarray:
    """Exact top-``k`` keys ``[Q, k]`` (uint64, best first) of ``queries`` over ``chunks`` of ``(keys, vectors)``
    by brute force in ``metric`` (queries normalised for ``cos``); ``exclude[i]`` (a key) is left out of query
    ``i``'s answer."""
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
class SearchAt(Protocol):
    """``search_at(queries [Q, D], k, expansion_search) -> keys [Q, k]`` (uint64, best first, padded with
    ``2**64 - 1``): one index searched at a given ``expansion_search``."""

    def __call__(self, queries: np.ndarray, k: int, expansion_search: int) -> np.ndarray: ...


def choose_expansion_search(search_at: SearchAt, queries: np.ndarray, truth: np.ndarray, k: int, *,
                            target_recall: float = IndexConfig.target_recall,
                            candidates: Sequence[int] = DEFAULT_CANDIDATES, own: np.ndarray | None = None,
                            connectivity: int = IndexConfig.connectivity, method: str = "given") -> TuningResult:
    """Sweep ``candidates`` (smallest first) and return the first whose recall@``k`` lower bound reaches
    ``target_recall`` (else the largest, ``reached: False``), with the curve measured on the way.

    ``truth``: the exact top-``k`` keys of ``queries``; ``own`` (leave-one-out): each query's own key, searched
    for ``k + 1`` and dropped. Recall of one query ``|found ∩ truth| / k``; estimate: the mean over queries;
    lower bound ``mean - 1.96 * std / sqrt(Q)``. Pure: ``search_at`` is the only collaborator, and nothing is
    stored here -- the caller keeps the chosen value.
    """
    if not 0.0 < float(target_recall) <= 1.0:
        raise ValueError("target_recall must be in (0, 1]")
    t0 = time.perf_counter()
    curve: list[tuple[int, float]] = []
    chosen: tuple[int, float, float] | None = None
    reached = False
    for ef in sorted(int(c) for c in candidates):
        found = search_at(queries, k + (own is not None), ef)
        if own is not None:
            found = _drop_self(found, own, k)
        r = _per_query_recall(found, truth, k)
        mean = float(r.mean())
        lower = mean - 1.96 * float(r.std(ddof=1) if r.size > 1 else 0.0) / math.sqrt(max(1, r.size))
        curve.append((ef, mean))
        chosen = (ef, mean, lower)
        if lower >= target_recall:
            reached = True
            break
    if chosen is None:
        raise ValueError("candidates must name at least one expansion_search value")
    ef, mean, lower = chosen
    return TuningResult(target_recall=float(target_recall), recall_estimate=mean, recall_lower_bound=lower,
                        expansion_search=ef, connectivity=int(connectivity), k=int(k),
                        queries=int(queries.shape[0]), method=method, reached=reached, curve=curve,
                        seconds=time.perf_counter() - t0)
