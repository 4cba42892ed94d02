"""Poincaré distance of the runtime (numpy) against geoopt and tki_sdk.train.hyperbolic in float64, and Poincaré
galleries: exact and HNSW + exact re-ranking give the exact Poincaré ranking."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tki_sdk.runtime.index import poincare
from tki_sdk.runtime.index.gallery import Gallery


def _ball_points(rng: np.random.Generator, n: int, d: int, c: float, edge: bool = True) -> np.ndarray:
    """Points spread over radii from the centre to 0.999 of the radius 1/sqrt(c), with ``edge`` a quarter
    within 1e-3..1e-4 of the boundary."""
    x = rng.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    m = n // 4 if edge else 0
    r = np.concatenate([rng.uniform(0, 0.999, n - m), 1 - 10.0 ** -rng.uniform(3, 4, m)])
    return x * r[:, None] / np.sqrt(c)


@pytest.mark.parametrize("c", [1.0, 0.5, 2.0])
def test_distance_matches_geoopt_and_tki_hyperbolic_in_float64(c):
    import geoopt

    from tki_sdk.train import hyperbolic as H

    rng = np.random.default_rng(0)
    x, y = _ball_points(rng, 40, 8, c), _ball_points(rng, 30, 8, c)
    ours = poincare.distance(x, y, c)
    ball = geoopt.PoincareBall(c=c)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    ref = ball.dist(xt[:, None, :], yt[None, :, :]).numpy()
    # geoopt (and tki_sdk.train.hyperbolic) go through artanh(||(-x) ⊕ y||), which is ill-conditioned when that norm
    # nears 1 (and clamped at 1 - 1e-7: distances saturate at ~16.8 / sqrt(c)): compare where it is
    # well-conditioned ...
    ok = np.sqrt(c) * ref < 6.0
    assert ok.mean() > 0.5 and (~ok).any()
    np.testing.assert_allclose(ours[ok], ref[ok], rtol=1e-6, atol=1e-9)
    # d(x, y) = dist0((-x) ⊕ y) with tki_sdk.train.hyperbolic's Möbius addition (no projection in float64).
    mob = H.mobius_add(-xt[:, None, :].expand(-1, 30, -1), yt[None].expand(40, -1, -1), c, project_result=False)
    np.testing.assert_allclose(ours[ok], H.dist0(mob, c)[..., 0].numpy()[ok], rtol=1e-6, atol=1e-9)
    # ... and far pairs (plus a sample of the others) against the formula evaluated with 50 digits (mpmath).
    import mpmath

    mpmath.mp.dps = 50
    far = list(zip(*np.nonzero(~ok)))
    for i, j in far[:: max(1, len(far) // 25)] + list(zip(*np.nonzero(ok)))[::40]:
        xs, ys = [mpmath.mpf(float(v)) for v in x[i]], [mpmath.mpf(float(v)) for v in y[j]]
        sq = sum((a - b) ** 2 for a, b in zip(xs, ys))
        den = (1 - c * sum(a * a for a in xs)) * (1 - c * sum(b * b for b in ys))
        want = mpmath.acosh(1 + 2 * c * sq / den) / mpmath.sqrt(c)
        assert ours[i, j] == pytest.approx(float(want), rel=1e-9)
    rows = poincare.distance_rows(x[:5], np.stack([y] * 5), c)
    np.testing.assert_allclose(rows, ours[:5], rtol=1e-9, atol=1e-9)
    assert np.all(np.diag(poincare.distance(x, x, c)) < 1e-6)


def test_points_outside_the_ball_are_refused():
    g = Gallery(4, metric="poincare", exact=True, curvature=1.0)
    with pytest.raises(ValueError, match="outside the Poincaré ball"):
        g.add([0], np.array([[1.0, 0.2, 0, 0]]))
    with pytest.raises(ValueError, match="curvature"):
        Gallery(4, metric="poincare")


def _exact_ranking(q: np.ndarray, x: np.ndarray, c: float, k: int) -> np.ndarray:
    import geoopt

    d = geoopt.PoincareBall(c=c).dist(torch.from_numpy(q)[:, None], torch.from_numpy(x)[None]).numpy()
    return np.argsort(d, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("dtype", ["f32", "f16", "i8"])
def test_hnsw_with_poincare_reranking_equals_the_exact_poincare_ranking(tmp_path, dtype):
    c, n, k = 1.0, 120, 10
    rng = np.random.default_rng(1)
    x = _ball_points(rng, n, 12, c, edge=False).astype(np.float32)  # away from geoopt's clamp
    q = _ball_points(rng, 25, 12, c, edge=False).astype(np.float32)
    want = _exact_ranking(q.astype(np.float64), x.astype(np.float64), c, k)
    # The Poincaré ranking is not the Euclidean one on these points (so re-ranking has work to do).
    l2 = np.argsort(((q[:, None] - x[None]) ** 2).sum(-1), axis=1, kind="stable")[:, :k]
    assert (l2 != want).any()

    exact = Gallery(12, metric="poincare", exact=True, curvature=c)
    exact.add(np.arange(n), x)
    keys, dist = exact.search(q, k)
    np.testing.assert_array_equal(keys.astype(np.int64), want)
    np.testing.assert_allclose(dist, poincare.distance(q, x, c)[np.arange(25)[:, None], want], rtol=1e-5)

    # HNSW whose candidate list covers the gallery: re-ranking must give exactly the Poincaré ranking.
    hnsw = Gallery(12, metric="poincare", dtype=dtype, curvature=c, rescore_oversample=n // k)
    hnsw.add(np.arange(n), x)
    assert hnsw.rescore
    keys, _ = hnsw.search(q, k)
    np.testing.assert_array_equal(keys.astype(np.int64), want)
    hnsw.save(tmp_path / "g")
    assert json.loads(next((tmp_path / "g").glob("v-*/gallery.json")).read_text())["curvature"] == c
    again = Gallery.load(tmp_path / "g")
    assert again.metric == "poincare" and again.curvature == c
    np.testing.assert_array_equal(again.search(q, k)[0].astype(np.int64), want)


def test_filtered_poincare_search_is_exact_over_the_matching_items():
    c, n, k = 0.5, 200, 5
    rng = np.random.default_rng(2)
    x = _ball_points(rng, n, 8, c, edge=False).astype(np.float32)
    q = _ball_points(rng, 6, 8, c, edge=False).astype(np.float32)
    g = Gallery(8, metric="poincare", curvature=c)
    g.add(np.arange(n), x, [{"domain": "a" if i % 3 else "b"} for i in range(n)])
    sub = np.flatnonzero(np.arange(n) % 3 == 0)
    want = sub[_exact_ranking(q.astype(np.float64), x[sub].astype(np.float64), c, k)]
    keys, _ = g.search(q, k, where={"domain": "b"})
    np.testing.assert_array_equal(keys.astype(np.int64), want)
