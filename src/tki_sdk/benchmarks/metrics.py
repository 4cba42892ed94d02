"""Retrieval metrics of the paper: mAP in its three conventions, Prec@k (numpy in, numpy out).

Ranking convention (the contract every function here follows):

* For each query, gallery items are ranked by descending score with a *stable* sort
  (``np.argsort(-scores, kind="stable")``): of two items with equal scores, the one
  earlier in the gallery ranks first. The results are therefore exact and
  reproducible, never dependent on a sort's tie order.
* ``rel(j)`` is 1 when the item at rank ``j`` (1-based) has the query's label.
* ``P(j) = (1/j) * sum_{i<=j} rel(i)`` is the precision at rank ``j``.

Definitions:

* ``AP@k = sum_{j<=k} P(j) * rel(j) / R_k`` with ``R_k = sum_{j<=k} rel(j)`` the number of
  relevant items *within the top k* (not in the whole gallery); ``AP@k = 0`` when
  ``R_k = 0``. ``k=None`` (or ``k >= G``) ranks the whole gallery, which is the usual
  (uninterpolated) average precision: ``sklearn.metrics.average_precision_score`` gives
  the same value when there are no ties.
* ``AP@k:min = sum_{j<=k} P(j) * rel(j) / min(k, R)`` with ``R`` the number of relevant items in the
  *whole gallery* (SAKE's / the sketch-retrieval literature's mAP@200); 0 when ``R = 0``. Unlike ``AP@k``
  it is never above ``Prec@k * k / min(k, R)``, so for ``R >= k`` it is at most Prec@k.
* The three mAP conventions (:data:`MAP_CONVENTIONS`): ``whole`` = mAP (whole gallery), ``hits`` = mAP@k
  (divided by the hits within the top k), ``min`` = mAP@k:min (divided by min(k, R)).
* ``Prec@k = R_k / k``: relevant items within the top k, divided by k, as the paper's
  protocol does on full datasets (every gallery there holds far more than k = 200 items).
  The divisor stays ``k`` when the gallery holds fewer than ``k`` items: a small sampled
  run then reports at most ``G / k``, never the inflated ``R_k / G`` (10/70 instead of
  10/200). Compare sampled runs with the paper only when ``G >= k``.
* mAP, mAP@k, Prec@k: the mean of the per-query values over all queries.

Self-matches: in the paper's cross-domain protocol query and gallery come from different
domains, so no query is ever in its gallery and nothing needs excluding. When a domain is
searched against itself (query set == gallery set), pass ``exclude_self=True`` to
:func:`retrieval_metrics` (or :func:`ranked_relevance`): query ``i`` is then gallery item
``i`` and is removed from its own ranking, so the gallery effectively has ``G - 1`` items.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "average_precision",
    "precision_at_k",
    "ranked_relevance",
    "retrieval_metrics",
    "ap_from_relevance",
    "precision_from_relevance",
    "ap_min_from_relevance",
    "relevant_counts",
    "MAP_CONVENTIONS",
    "map_key",
]

#: The mAP conventions and what each divides the sum of P(j) over the ranked hits by: ``whole`` every
#: relevant item of the gallery (all ranks), ``hits`` the relevant items within the top k, ``min``
#: min(k, relevant items of the gallery) (top k only).
MAP_CONVENTIONS = {
    "whole": "mAP over the whole ranked gallery (sum of P(j) over all hits / relevant items in the gallery)",
    "hits": "mAP@k by hits (sum of P(j) over the hits within the top k / those hits)",
    "min": "mAP@k over min(k, R) (sum of P(j) over the hits within the top k / min(k, relevant items in the gallery))",
}


def map_key(convention: str, k: int) -> str:
    """The result key of an mAP convention: ``whole`` -> ``mAP``, ``hits`` -> ``mAP@k``, ``min`` -> ``mAP@k:min``."""
    if convention not in MAP_CONVENTIONS:
        raise ValueError(f"mAP convention must be one of {', '.join(MAP_CONVENTIONS)}, got {convention!r}")
    return {"whole": "mAP", "hits": f"mAP@{k}", "min": f"mAP@{k}:min"}[convention]

# Budget for the per-chunk score matrix plus its sort indices (bytes).
_DEFAULT_CHUNK_BYTES = 256 * 2**20


def _check_inputs(scores: np.ndarray, query_labels: Any, gallery_labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be a [Q, G] matrix, got shape {scores.shape}")
    q = np.asarray(query_labels).reshape(-1)
    g = np.asarray(gallery_labels).reshape(-1)
    if q.shape[0] != scores.shape[0]:
        raise ValueError(f"{q.shape[0]} query labels for {scores.shape[0]} score rows")
    if g.shape[0] != scores.shape[1]:
        raise ValueError(f"{g.shape[0]} gallery labels for {scores.shape[1]} score columns")
    if np.issubdtype(scores.dtype, np.floating) and np.isnan(scores).any():
        raise ValueError("scores contain NaN; rankings are undefined")
    return scores, q, g


def _check_k(k: int | None) -> None:
    if k is not None and (not isinstance(k, (int, np.integer)) or k < 1):
        raise ValueError(f"k must be a positive integer or None, got {k!r}")


def _stable_topk_order(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the first ``k`` items of each row's stable descending ranking, in rank order.

    Equal to ``np.argsort(-scores, axis=1, kind="stable")[:, :k]``, but sorts only a
    candidate set when ``k`` is small: with ``t`` the k-th largest score of a row, every
    item of the row's true top k has score >= t, so the ``m = max_rows #{score >= t}``
    largest items of every row (found by ``argpartition``) contain it. Candidates are put
    back into gallery order and then stably sorted by descending score, which reproduces
    the full stable ranking restricted to them.
    """
    n, g = scores.shape
    if k >= g:
        return np.argsort(-scores, axis=1, kind="stable")
    neg = -scores
    kth = np.partition(neg, k - 1, axis=1)[:, k - 1 : k]  # -(k-th largest score) per row
    m = int((neg <= kth).sum(axis=1).max())
    if m * 4 >= g:  # heavy ties / large k: a full sort is as cheap
        return np.argsort(neg, axis=1, kind="stable")[:, :k]
    cand = np.argpartition(neg, m - 1, axis=1)[:, :m]
    cand.sort(axis=1)  # gallery order, so the stable sort below breaks ties by gallery index
    cand_neg = np.take_along_axis(neg, cand, axis=1)
    order = np.argsort(cand_neg, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(cand, order, axis=1)


def ranked_relevance(
    scores: np.ndarray,
    query_labels: Any,
    gallery_labels: Any,
    k: int | None = None,
    *,
    exclude_self: bool = False,
    self_offset: int = 0,
) -> np.ndarray:
    """Boolean ``[Q, min(k, G')]`` matrix: ``rel[q, j-1]`` = the rank-``j`` item has the query's label.

    Ranking as in the module docstring (descending score, ties by gallery order).
    ``exclude_self``: query row ``q`` is gallery item ``q + self_offset`` and is dropped
    from its ranking (``G' = G - 1``); ``self_offset`` lets a chunk of queries
    ``[offset, offset + Q)`` of a same-domain search use this. Otherwise ``G' = G``.
    """
    scores, ql, gl = _check_inputs(scores, query_labels, gallery_labels)
    _check_k(k)
    n, g = scores.shape
    g_eff = g - 1 if exclude_self else g
    if g_eff < 1:
        raise ValueError("the gallery is empty")
    kk = g_eff if k is None else min(int(k), g_eff)
    if exclude_self:
        self_idx = np.arange(n) + self_offset
        if self_idx.size and (self_idx[-1] >= g):
            raise ValueError("exclude_self needs query i to be gallery item i (+ self_offset)")
        order = _stable_topk_order(scores, min(kk + 1, g))
        keep = order != self_idx[:, None]
        # Each row drops its own index if present among the first kk+1, else its last entry.
        drop_last = keep.all(axis=1)
        keep[drop_last, -1] = False
        order = order[keep].reshape(n, -1)[:, :kk]
    else:
        order = _stable_topk_order(scores, kk)
    return gl[order] == ql[:, None]


def ap_from_relevance(rel: np.ndarray) -> np.ndarray:
    """``AP = sum_j P(j) rel(j) / sum_j rel(j)`` per row of a ranked relevance matrix (0 if no relevant)."""
    rel = np.asarray(rel, dtype=bool)
    if rel.shape[1] == 0:
        return np.zeros(rel.shape[0])
    hits = np.cumsum(rel, axis=1, dtype=np.float64)
    ranks = np.arange(1, rel.shape[1] + 1, dtype=np.float64)
    num = np.where(rel, hits / ranks, 0.0).sum(axis=1)
    n_rel = hits[:, -1]
    return np.divide(num, n_rel, out=np.zeros_like(num), where=n_rel > 0)


def ap_min_from_relevance(rel: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """``AP@k:min = sum_{j<=k} P(j) rel(j) / min(k, R)`` per row; ``n_relevant`` is R, the relevant items of the
    whole gallery (0 where R = 0)."""
    rel = np.asarray(rel, dtype=bool)[:, :k]
    n_relevant = np.asarray(n_relevant, dtype=np.float64)
    if rel.shape[1] == 0:
        return np.zeros(rel.shape[0])
    hits = np.cumsum(rel, axis=1, dtype=np.float64)
    ranks = np.arange(1, rel.shape[1] + 1, dtype=np.float64)
    num = np.where(rel, hits / ranks, 0.0).sum(axis=1)
    den = np.minimum(float(k), n_relevant)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def relevant_counts(query_labels: Any, gallery_labels: Any, *, exclude_self: bool = False) -> np.ndarray:
    """R per query: gallery items with the query's label (less the query itself under ``exclude_self``)."""
    ql = np.asarray(query_labels).reshape(-1)
    gl = np.asarray(gallery_labels).reshape(-1)
    values, counts = np.unique(gl, return_counts=True)
    pos = np.searchsorted(values, ql)
    pos_c = np.clip(pos, 0, max(len(values) - 1, 0))
    found = (pos < len(values)) & (values[pos_c] == ql) if len(values) else np.zeros(len(ql), bool)
    r = np.where(found, counts[pos_c] if len(values) else 0, 0).astype(np.int64)
    return r - 1 if exclude_self else r


def precision_from_relevance(rel: np.ndarray, k: int | None = None) -> np.ndarray:
    """``Prec@k = sum_{j<=k} rel(j) / k`` per row of a ranked relevance matrix (``k=None``: the list length).

    The list may be shorter than ``k`` (a gallery smaller than ``k``); the divisor is still ``k``.
    """
    rel = np.asarray(rel, dtype=bool)
    k = rel.shape[1] if k is None else int(k)
    if k == 0:
        return np.zeros(rel.shape[0])
    return rel[:, :k].sum(axis=1, dtype=np.float64) / k


def average_precision(
    scores: np.ndarray, query_labels: Any, gallery_labels: Any, k: int | None = None
) -> np.ndarray:
    """Per-query ``AP@k`` (``k=None``: whole gallery), shape ``[Q]``, float64.

    ``AP@k = sum_{j<=k} P(j) * rel(j) / (number of relevant items within the top k)``;
    0 when none of the top k is relevant. Ranking: descending ``scores[q]``, ties broken by
    gallery order (stable sort). ``scores`` is ``[Q, G]`` (higher = more similar),
    ``query_labels`` ``[Q]``, ``gallery_labels`` ``[G]`` (any comparable dtype).
    """
    return ap_from_relevance(ranked_relevance(scores, query_labels, gallery_labels, k))


def precision_at_k(scores: np.ndarray, query_labels: Any, gallery_labels: Any, k: int) -> np.ndarray:
    """Per-query ``Prec@k = (relevant items within the top k) / k``, shape ``[Q]``, float64.

    Divides by ``k`` also when the gallery holds fewer than ``k`` items (see the module docstring).
    Same ranking as :func:`average_precision` (stable ties by gallery order).
    """
    if k is None:
        raise ValueError("precision_at_k needs an integer k")
    return precision_from_relevance(ranked_relevance(scores, query_labels, gallery_labels, k), k)


def _normalize_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def retrieval_metrics(
    query_emb: np.ndarray,
    query_labels: Any,
    gallery_emb: np.ndarray,
    gallery_labels: Any,
    ks: Sequence[int] = (200,),
    chunk: int | None = None,
    *,
    full_map: bool = True,
    exclude_self: bool = False,
    normalize: bool = True,
    return_per_query: bool = False,
    metric: str = "cos",
    curvature: float | None = None,
) -> dict[str, Any]:
    """mAP (whole gallery), mAP@k (by hits), mAP@k:min and Prec@k for every k in ``ks``, by ``metric``.

    ``metric``: ``"cos"`` (default) scores ``cos(q, g)``; ``"ip"`` the raw inner product ``q . g``
    (no normalisation); ``"poincare"`` minus the Poincaré-ball distance ``-d_c(q, g)``
    (:func:`tki_sdk.runtime.index.poincare.distance`, ``curvature`` c of the ball of curvature -c), so
    the nearest point in the ball ranks first.

    For cos, rows are L2-normalised (``normalize=True``; pass False for
    embeddings already unit-norm to skip the copy) and ``scores = Q_chunk @ G.T`` is formed
    one query chunk at a time, so memory is ``O(chunk * G)``, never ``O(Q * G)``; ``chunk=None``
    picks the largest chunk within ~256 MiB. Results equal :func:`average_precision` /
    :func:`precision_at_k` on the full matrix (same stable tie rule).

    ``exclude_self``: the query set *is* the gallery (same domain searched against itself);
    each query's own item is removed from its ranking. Not needed for the cross-domain
    pairs of the paper, where query and gallery domains differ.

    Returns ``{"mAP": float, "mAP@k": float, "mAP@k:min": float, "Prec@k": float, ..., "n_queries": Q,
    "n_gallery": G}`` (values in [0, 1]); with ``return_per_query`` also
    ``"per_query": {name: ndarray[Q]}``.
    """
    qe = np.asarray(query_emb)
    ge = np.asarray(gallery_emb)
    if qe.ndim != 2 or ge.ndim != 2 or qe.shape[1] != ge.shape[1]:
        raise ValueError(f"embeddings must be [Q, D] and [G, D] with the same D, got {qe.shape} and {ge.shape}")
    ql = np.asarray(query_labels).reshape(-1)
    gl = np.asarray(gallery_labels).reshape(-1)
    if ql.shape[0] != qe.shape[0] or gl.shape[0] != ge.shape[0]:
        raise ValueError("one label per embedding is required")
    if exclude_self and qe.shape[0] != ge.shape[0]:
        raise ValueError("exclude_self needs the query set to be the gallery set (same length, same order)")
    ks = [int(k) for k in ks]
    for k in ks:
        _check_k(k)
    if metric not in ("cos", "ip", "poincare"):
        raise ValueError(f"metric must be cos, ip or poincare, got {metric!r}")
    if metric == "poincare":
        from tki_sdk.runtime.index.poincare import check_in_ball, distance

        check_in_ball(qe, curvature, "query embeddings")
        check_in_ball(ge, curvature, "gallery embeddings")
    if normalize and metric == "cos":
        qe, ge = _normalize_rows(qe), _normalize_rows(ge)
    else:
        qe, ge = qe.astype(np.float32, copy=False), ge.astype(np.float32, copy=False)
    n_q, n_g = qe.shape[0], ge.shape[0]
    if chunk is None:
        chunk = max(1, min(n_q, _DEFAULT_CHUNK_BYTES // max(1, n_g * 16)))
    chunk = max(1, int(chunk))
    kmax = None if full_map else (max(ks) if ks else 1)

    names = (["mAP"] if full_map else []) + [f"mAP@{k}" for k in ks] + [f"mAP@{k}:min" for k in ks] \
        + [f"Prec@{k}" for k in ks]
    n_rel = relevant_counts(ql, gl, exclude_self=exclude_self)
    per_query = {name: np.zeros(n_q) for name in names}
    for start in range(0, n_q, chunk):
        stop = min(n_q, start + chunk)
        s = -distance(qe[start:stop], ge, curvature) if metric == "poincare" else qe[start:stop] @ ge.T
        rel = ranked_relevance(s, ql[start:stop], gl, kmax, exclude_self=exclude_self, self_offset=start)
        if full_map:
            per_query["mAP"][start:stop] = ap_from_relevance(rel)
        for k in ks:
            per_query[f"mAP@{k}"][start:stop] = ap_from_relevance(rel[:, :k])
            per_query[f"mAP@{k}:min"][start:stop] = ap_min_from_relevance(rel, n_rel[start:stop], k)
            per_query[f"Prec@{k}"][start:stop] = precision_from_relevance(rel[:, :k], k)

    out: dict[str, Any] = {name: float(v.mean()) if n_q else float("nan") for name, v in per_query.items()}
    out["n_queries"] = n_q
    out["n_gallery"] = n_g
    if return_per_query:
        out["per_query"] = per_query
    return out
