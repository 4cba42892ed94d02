r"""Poincaré-ball distance for the runtime, in numpy (no torch).

The ball of curvature :math:`-c` has radius :math:`1/\sqrt{c}`. The geodesic distance is

.. math::
    d_c(x, y) = \frac{1}{\sqrt{c}} \operatorname{arcosh}\!\left(1 + \frac{2c\,\|x - y\|^2}
                {(1 - c\|x\|^2)(1 - c\|y\|^2)}\right),

the same function as ``geoopt.PoincareBall(c).dist`` and :math:`2\operatorname{artanh}_c(\|(-x)\oplus_c y\|)`
of :mod:`tki_sdk.train.hyperbolic` (to float64 rounding). Computed in float64; :math:`\|x-y\|^2` is taken from
:math:`\|x\|^2 + \|y\|^2 - 2\langle x, y\rangle` (one matrix product for a whole gallery), except for
pairs where that form cancels (:math:`\|x-y\|^2 < 10^{-4}(\|x\|^2+\|y\|^2)`), which are recomputed from the
difference itself (near the boundary the tiny denominator would magnify the cancellation); and
:math:`1 - c\|x\|^2` is clamped at ``MIN_MARGIN`` so points on or past the boundary give a large finite
distance rather than NaN. Ranking by distance equals ranking by the arcosh argument (arcosh increases).
"""
from __future__ import annotations

import numpy as np

__all__ = ["MIN_MARGIN", "check_in_ball", "distance", "distance_rows"]

#: Smallest ``1 - c||x||^2`` used (float64): keeps distances finite for points on the boundary.
MIN_MARGIN = 1e-15


def _margin(sq_norm: np.ndarray, c: float) -> np.ndarray:
    return np.maximum(1.0 - c * sq_norm, MIN_MARGIN)


def _from_parts(sq_dist: np.ndarray, margin_a: np.ndarray, margin_b: np.ndarray, c: float) -> np.ndarray:
    arg = 1.0 + 2.0 * c * np.maximum(sq_dist, 0.0) / (margin_a * margin_b)
    return np.arccosh(np.maximum(arg, 1.0)) / np.sqrt(c)


def distance(x: np.ndarray, y: np.ndarray, c: float = 1.0) -> np.ndarray:
    """Pairwise distances ``[N, M]`` (float64) between points ``x [N, D]`` and ``y [M, D]``."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    y = np.atleast_2d(np.asarray(y, dtype=np.float64))
    x2 = np.einsum("nd,nd->n", x, x)
    y2 = np.einsum("md,md->m", y, y)
    sq = x2[:, None] + y2[None, :] - 2.0 * (x @ y.T)
    close = np.nonzero(sq < 1e-4 * (x2[:, None] + y2[None, :]))
    if close[0].size:
        diff = x[close[0]] - y[close[1]]
        sq[close] = np.einsum("kd,kd->k", diff, diff)
    return _from_parts(sq, _margin(x2, c)[:, None], _margin(y2, c)[None, :], c)


def distance_rows(q: np.ndarray, cand: np.ndarray, c: float = 1.0) -> np.ndarray:
    """Distances ``[Q, m]`` (float64) of query ``q[i]`` (``q [Q, D]``) to its own candidates ``cand[i]``
    (``cand [Q, m, D]``): the re-ranking step of a Poincaré gallery."""
    q = np.asarray(q, dtype=np.float64)
    v = np.asarray(cand, dtype=np.float64)
    diff = v - q[:, None, :]
    sq = np.einsum("qmd,qmd->qm", diff, diff)  # direct difference: exact also for near-equal points
    q2 = np.einsum("qd,qd->q", q, q)
    v2 = np.einsum("qmd,qmd->qm", v, v)
    return _from_parts(sq, _margin(q2, c)[:, None], _margin(v2, c), c)


def check_in_ball(x: np.ndarray, c: float, what: str = "vectors") -> None:
    """``ValueError`` (one line, says what to do) when a row of ``x`` lies on or outside the ball."""
    if c is None or not c > 0:
        raise ValueError("a Poincaré gallery needs the curvature c > 0 of its ball (tki.json's head_config)")
    sq = np.einsum("nd,nd->n", np.asarray(x, dtype=np.float64), np.asarray(x, dtype=np.float64))
    bad = np.flatnonzero(c * sq >= 1.0)
    if bad.size:
        raise ValueError(
            f"{what}: {bad.size} row(s) lie outside the Poincaré ball of curvature -{c} (first: row {bad[0]}, "
            f"norm {np.sqrt(sq[bad[0]]):.4g} >= {1 / np.sqrt(c):.4g}); embed with an export made by "
            "tki-export --embedding ball, or use metric cos"
        )
