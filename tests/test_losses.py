"""The TKI losses against numpy implementations written straight from the paper's equations."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tki_sdk.train.losses import aggregation_loss, class_consistency_loss, domain_diversity_loss, expansion_loss


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def np_lmax(t: np.ndarray, alpha: float, mu: float) -> float:
    p = len(t)
    total = 0.0
    for i in range(p):
        for j in range(p):
            if i != j:
                total += np.log(1 + np.exp(alpha * (_cos(t[i], t[j]) - mu)))
    return total / (p * (p - 1))


def np_lmin(tp: np.ndarray, tc: np.ndarray, tau: float) -> float:
    p, c, _ = tp.shape
    total = 0.0
    for a in range(p):
        for i in range(c):
            num = np.exp(_cos(tp[a, i], tc[i]) / tau)
            den = sum(np.exp(_cos(tp[a, i], tc[j]) / tau) for j in range(c))
            total += np.log(num / den)
    return -total / (p * c)


def np_lagg(z: np.ndarray, tau: float) -> float:
    p, c, _ = z.shape
    total = 0.0
    for a in range(p):
        for i in range(c):
            num = sum(np.exp(z[a, i] @ z[q, i] / tau) for q in range(p) if q != a)
            den = sum(np.exp(z[a, i] @ z[q, j] / tau) for q in range(p) for j in range(c))
            total += np.log(num / den)
    return -total / (p * c)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def test_domain_diversity_matches_eq1(rng: np.random.Generator) -> None:
    t = rng.normal(size=(5, 7)) * rng.uniform(0.5, 3, size=(5, 1))  # raw, unnormalised features
    for alpha, mu in [(10.0, 0.5), (1.0, 0.0), (3.0, -0.2)]:
        got = domain_diversity_loss(torch.tensor(t), alpha=alpha, mu=mu).item()
        assert got == pytest.approx(np_lmax(t, alpha, mu), rel=1e-12)


def test_domain_diversity_by_hand() -> None:
    # Two orthogonal domain features: s_12 = s_21 = 0, so L_max = log(1 + e^{-alpha*mu}).
    t = torch.tensor([[2.0, 0.0], [0.0, 5.0]], dtype=torch.float64)
    assert domain_diversity_loss(t, alpha=2.0, mu=0.5).item() == pytest.approx(np.log(1 + np.exp(-1.0)), rel=1e-14)
    # Identical directions: s = 1, L_max = log(1 + e^{alpha(1-mu)}).
    t = torch.tensor([[1.0, 1.0], [3.0, 3.0]], dtype=torch.float64)
    assert domain_diversity_loss(t, alpha=2.0, mu=0.5).item() == pytest.approx(np.log(1 + np.exp(1.0)), rel=1e-14)


def test_class_consistency_matches_eq3(rng: np.random.Generator) -> None:
    tp = rng.normal(size=(4, 3, 6)) * 4
    tc = rng.normal(size=(3, 6)) * 0.3
    for tau in (0.1, 1.0):
        got = class_consistency_loss(torch.tensor(tp), torch.tensor(tc), tau=tau).item()
        assert got == pytest.approx(np_lmin(tp, tc, tau), rel=1e-12)


def test_class_consistency_by_hand() -> None:
    # P=1, C=2, prompts equal to their prototypes, prototypes orthogonal: s_ii = 1, s_ij = 0.
    # Each term: -log(e^{1/tau} / (e^{1/tau} + 1)) = log(1 + e^{-1/tau}).
    tc = torch.eye(2, dtype=torch.float64)
    tp = tc[None] * 3.0
    assert class_consistency_loss(tp, tc, tau=0.5).item() == pytest.approx(np.log(1 + np.exp(-2.0)), rel=1e-14)


def test_expansion_is_min_plus_lambda_max(rng: np.random.Generator) -> None:
    tp, tc, td = (torch.tensor(rng.normal(size=s)) for s in [(3, 4, 5), (4, 5), (3, 5)])
    total, l_min, l_max = expansion_loss(tp, tc, td, lam=0.7, tau=0.2, alpha=4.0, mu=0.1)
    assert total.item() == pytest.approx(np_lmin(tp.numpy(), tc.numpy(), 0.2) + 0.7 * np_lmax(td.numpy(), 4.0, 0.1), rel=1e-12)
    assert l_min.item() == pytest.approx(np_lmin(tp.numpy(), tc.numpy(), 0.2), rel=1e-12)


def test_aggregation_matches_eq6(rng: np.random.Generator) -> None:
    z = rng.normal(size=(4, 3, 5)) * 0.4  # raw dot products, no normalisation
    for tau in (0.1, 0.5):
        assert aggregation_loss(torch.tensor(z), tau=tau).item() == pytest.approx(np_lagg(z, tau), rel=1e-12)


def test_aggregation_by_hand() -> None:
    # P=2, C=1: one class. Numerator for (p,i) is the other domain only; denominator includes the anchor.
    # z_1 = (1,0), z_2 = (0,1): z1.z2 = 0, z1.z1 = 1 -> term = -log(e^0 / (e^{1/tau} + e^0)).
    z = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]], dtype=torch.float64)
    assert aggregation_loss(z, tau=0.5).item() == pytest.approx(np.log(np.exp(2.0) + 1.0), rel=1e-14)


def test_bad_shapes_are_clear() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        domain_diversity_loss(torch.randn(1, 4))
    with pytest.raises(ValueError, match="P,C,D"):
        class_consistency_loss(torch.randn(2, 3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="at least 2"):
        aggregation_loss(torch.randn(1, 3, 4))
