"""Poincaré-ball ops against geoopt (float64, 1e-10) and their safety in float32 / float16."""
from __future__ import annotations

import geoopt
import pytest
import torch

from tki_sdk.train import hyperbolic as H

CURVATURES = [0.1, 0.5, 1.0, 2.0, 7.3]
NORMS = [1e-7, 1e-4, 0.1, 0.5, 0.9, 0.999, 1.0, 1.5, 10.0, 1e3]  # relative to the radius 1/sqrt(c)


def _ball(c: float) -> geoopt.PoincareBall:
    return geoopt.PoincareBall(c=torch.tensor(c, dtype=torch.float64))


def _vectors(n: int, d: int, norm: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, d, generator=g, dtype=torch.float64)
    return v / v.norm(dim=-1, keepdim=True) * norm


@pytest.mark.parametrize("c", CURVATURES)
@pytest.mark.parametrize("norm", NORMS)
def test_maps_match_geoopt(c: float, norm: float) -> None:
    ball = _ball(c)
    r = 1 / c**0.5
    v = _vectors(64, 24, norm * r, seed=1)
    torch.testing.assert_close(H.expmap0(v, c), ball.expmap0(v), atol=1e-10, rtol=0)
    # logmap0 on points up to and past the boundary (geoopt clamps the same way)
    torch.testing.assert_close(H.logmap0(v, c), ball.logmap0(v), atol=1e-10, rtol=0)
    torch.testing.assert_close(H.project(v, c), ball.projx(v), atol=1e-10, rtol=0)


@pytest.mark.parametrize("c", CURVATURES)
@pytest.mark.parametrize("norm", [1e-7, 0.3, 0.9, 0.999, 5.0])
def test_mobius_ops_match_geoopt(c: float, norm: float) -> None:
    ball = _ball(c)
    r = 1 / c**0.5
    x = ball.projx(_vectors(32, 16, norm * r, seed=2))
    y = ball.projx(_vectors(32, 16, 0.7 * r, seed=3) * torch.rand(32, 1, dtype=torch.float64))
    m = torch.randn(10, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(H.mobius_add(x, y, c), ball.mobius_add(x, y), atol=1e-10, rtol=0)
    torch.testing.assert_close(H.mobius_add(y, x, c), ball.mobius_add(y, x), atol=1e-10, rtol=0)
    torch.testing.assert_close(H.mobius_matvec(m, x, c), ball.mobius_matvec(m, x), atol=1e-10, rtol=0)


@pytest.mark.parametrize("c", CURVATURES)
@pytest.mark.parametrize("norm", [1e-7, 0.1, 0.5, 0.9, 0.999, 1.0, 10.0])
def test_dist0_matches_geoopt(c: float, norm: float) -> None:
    """dist0 = 2 artanh(sqrt(c) ||y||) / sqrt(c): geoopt's dist0, and by hand (the factor 2 included)."""
    ball = _ball(c)
    y = ball.projx(_vectors(32, 12, norm / c**0.5, seed=6))
    got = H.dist0(y, c)
    assert got.shape == (32, 1)
    torch.testing.assert_close(got, ball.dist0(y, keepdim=True), atol=1e-9, rtol=1e-9)
    n = y.norm(dim=-1, keepdim=True).clamp_min(1e-15)
    torch.testing.assert_close(got, 2 * torch.atanh(c**0.5 * n) / c**0.5, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("dtype, eps", [(torch.float32, 4e-3), (torch.float16, 4e-3), (torch.float64, 1e-5)])
@pytest.mark.parametrize("c", [0.5, 1.0, 7.3])
def test_projection_margin_is_geoopts_per_dtype(dtype: torch.dtype, eps: float, c: float) -> None:
    """Points outside the ball land exactly on radius (1 - eps)/sqrt(c): eps = 4e-3 in float32 / float16 (what
    geoopt uses in float32), 1e-5 in float64; points inside are untouched."""
    far = _vectors(16, 8, 3.0 / c**0.5, seed=7).to(dtype)
    got = H.project(far, c).double().norm(dim=-1)
    want = (1 - eps) / c**0.5
    tol = 2e-3 * want if dtype == torch.float16 else 1e-6 * want
    assert ((got - want).abs() <= tol).all(), (got.min().item(), got.max().item(), want)
    if dtype != torch.float16:
        ref = geoopt.PoincareBall(c=torch.tensor(c, dtype=dtype)).projx(far)
        torch.testing.assert_close(H.project(far, c), ref, atol=1e-6 if dtype == torch.float32 else 1e-12, rtol=0)
    inside = _vectors(16, 8, 0.99 * (1 - 4e-3) / c**0.5, seed=8).to(dtype)
    torch.testing.assert_close(H.project(inside, c), inside, atol=0, rtol=0)
    # expmap0 of a huge tangent vector saturates at the same radius
    sat = H.expmap0(_vectors(4, 8, 50.0, seed=9).to(dtype), c).double().norm(dim=-1)
    assert ((sat - want).abs() <= tol).all()


def test_closed_forms_by_hand() -> None:
    # c = 1, v = (3, 4): ||v|| = 5, expmap0 = tanh(5) * v / 5; logmap0 inverts it.
    v = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    want = torch.tanh(torch.tensor(5.0, dtype=torch.float64)) * v / 5
    torch.testing.assert_close(H.expmap0(v, 1.0, project_result=False), want, atol=1e-15, rtol=0)
    # Möbius addition with the origin is the identity, and x ⊕ (-x) = 0.
    x = torch.tensor([[0.3, -0.2]], dtype=torch.float64)
    torch.testing.assert_close(H.mobius_add(x, torch.zeros_like(x), 1.0), x, atol=1e-15, rtol=0)
    torch.testing.assert_close(H.mobius_add(x, -x, 1.0), torch.zeros_like(x), atol=1e-15, rtol=0)
    # M ⊗ x with M = 2I at c = 1: tanh(2 artanh(||x||)) x/||x||.
    n = x.norm()
    want = torch.tanh(2 * torch.atanh(n)) * x / n
    torch.testing.assert_close(H.mobius_matvec(2 * torch.eye(2, dtype=torch.float64), x, 1.0), want, atol=1e-14, rtol=0)


def test_expmap_logmap_roundtrip() -> None:
    v = _vectors(16, 8, 0.8, seed=5)
    for c in CURVATURES:
        torch.testing.assert_close(H.logmap0(H.expmap0(v, c), c), v, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_finite_at_edges(dtype: torch.dtype) -> None:
    big = 6e4 if dtype == torch.float16 else 1e30
    cases = {
        "zero": torch.zeros(4, 32, dtype=dtype),
        "tiny": torch.full((4, 32), 1e-7, dtype=dtype),
        "huge": torch.full((4, 32), big, dtype=dtype),
        "boundary": (torch.ones(4, 32) / 32**0.5).to(dtype),
        "past": (torch.ones(4, 32) * 3).to(dtype),
    }
    m = torch.randn(8, 32).to(dtype)
    for c in (0.5, 1.0, 2.0):
        for name, v in cases.items():
            outs = {
                "expmap0": H.expmap0(v, c),
                "logmap0": H.logmap0(v, c),
                "project": H.project(v, c),
                "mobius_add": H.mobius_add(H.project(v, c), H.project(v.flip(0), c), c),
                "mobius_matvec": H.mobius_matvec(m, H.project(v, c), c),
                "mobius_matvec_zero_m": H.mobius_matvec(torch.zeros_like(m), H.project(v, c), c),
            }
            for op, out in outs.items():
                assert out.dtype == dtype, (op, name)
                assert torch.isfinite(out).all(), f"{op} not finite for {name} at c={c} in {dtype}"
            # every ball-valued op stays inside the ball
            for op in ("expmap0", "project", "mobius_add", "mobius_matvec"):
                assert (outs[op].float().norm(dim=-1) <= 1 / c**0.5 + 1e-3).all(), (op, name, c)


def test_gradients_finite_at_zero() -> None:
    v = torch.zeros(3, 8, requires_grad=True)
    H.logmap0(H.expmap0(v, 1.0), 1.0).sum().backward()
    assert torch.isfinite(v.grad).all()
