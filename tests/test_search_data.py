"""Search data: the embedding-shaped generator follows the fitted spectrum file; near-duplicates are there."""
from __future__ import annotations

import numpy as np
import pytest

from tki_sdk.benchmarks.search_data import (SPECTRUM_FILE, EmbeddingSpectrum, covariance_spectrum,
                                            embedding_shaped_vectors, fit_spectrum, load_spectrum)


def test_shipped_spectrum_file_is_a_fit_of_unit_embeddings():
    spec = load_spectrum()
    assert SPECTRUM_FILE.is_file() and spec.dim == len(spec.eigenvalues) == 512
    assert "RANDOM INIT" in spec.source and spec.n_embeddings >= 500
    lam = np.asarray(spec.eigenvalues)
    assert np.all(np.diff(lam) <= 1e-12) and lam.min() >= 0
    assert spec.mean_norm**2 + lam.sum() == pytest.approx(1.0, abs=1e-3)  # unit vectors: trace + |mean|^2
    assert spec.participation_ratio() < 100  # anisotropic: variance in few directions


def test_generator_matches_the_fitted_spectrum():
    spec = load_spectrum()
    x = embedding_shaped_vectors(20_000, 512, spectrum=spec, near_duplicates=0.0, seed=3)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    mean_norm, lam = covariance_spectrum(x)
    ref = np.asarray(spec.eigenvalues)
    assert mean_norm == pytest.approx(spec.mean_norm, rel=0.05)
    top = 20  # the leading eigenvalues carry the shape; each within 15%
    np.testing.assert_allclose(lam[:top], ref[:top], rtol=0.15)
    # the cumulative variance curve agrees everywhere within 0.03
    assert np.max(np.abs(np.cumsum(lam) / lam.sum() - np.cumsum(ref) / ref.sum())) < 0.03
    assert covariance_spectrum(x)[1][:5] == pytest.approx(lam[:5])  # deterministic


def test_generator_is_seeded_streams_differ_and_has_near_duplicates():
    a = embedding_shaped_vectors(3000, 64, seed=1)
    b = embedding_shaped_vectors(3000, 64, seed=1)
    q = embedding_shaped_vectors(300, 64, seed=1, stream=1)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a[:300], q)
    s = a @ a.T
    np.fill_diagonal(s, -1)
    best = s.max(axis=1)
    plain = embedding_shaped_vectors(3000, 64, seed=1, near_duplicates=0.0) @ embedding_shaped_vectors(
        3000, 64, seed=1, near_duplicates=0.0).T
    np.fill_diagonal(plain, -1)
    # about 5% of rows are a perturbed copy: both rows of such a pair have a partner at cosine > 0.9995
    assert np.sum(best > 0.9995) >= 0.06 * 3000 and np.sum(plain.max(axis=1) > 0.9995) < 0.01 * 3000


def test_fit_round_trip_and_resampling(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((2000, 32)) * (np.arange(1, 33) ** -1.0) + 0.5
    spec = fit_spectrum(emb, "test")
    path = spec.save(tmp_path / "s.json")
    again = load_spectrum(path)
    np.testing.assert_allclose(again.eigenvalues, spec.eigenvalues, rtol=1e-5)
    m, lam = again.scaled_to(64)
    assert lam.size == 64 and lam.sum() == pytest.approx(sum(spec.eigenvalues), rel=1e-6) and m == spec.mean_norm
    assert isinstance(again, EmbeddingSpectrum)
