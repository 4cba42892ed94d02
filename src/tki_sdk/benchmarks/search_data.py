"""Vectors for the search suite: clustered unit vectors, embedding-shaped vectors, and the fitted spectrum.

Two generators, both seeded and streamed in chunks (``stream`` 0: the indexed vectors, 1: the queries):

* :func:`clustered_unit_vectors` -- a mixture of Gaussian clusters on the sphere with a power-law noise
  spectrum (``decay`` 0: isotropic, the hardest case for any graph index).
* :func:`embedding_shaped_vectors` -- anisotropic vectors shaped like image embeddings: a shared mean
  direction plus Gaussian variation whose covariance eigenvalues are those of real embeddings
  (:class:`EmbeddingSpectrum`, fitted by :func:`fit_spectrum` and kept in :data:`SPECTRUM_FILE`), and a
  fraction of near-duplicates (an earlier row plus a small perturbation in the same subspace)::

      x = normalize(mean_norm * u + R diag(sqrt(lambda)) g),   g ~ N(0, I)
      near-duplicate of row j:  normalize(x_j + duplicate_noise * R diag(sqrt(lambda)) g')

  ``R`` is a random rotation fixed by ``seed`` and ``u`` its second column: with the mean along a principal
  direction the covariance of the normalised vectors stays diagonal in ``R``'s basis (normalising moves
  points radially, i.e. along the mean, and every other coordinate keeps its sign symmetry), so each
  eigenvalue can be matched; the second direction is the first whose variance exceeds what the radial
  movement alone adds (the leading one, along the mean, would need a bimodal distribution). Normalising shrinks
  the leading directions of a strongly anisotropic Gaussian, so ``mean_norm`` and ``lambda`` above are
  calibrated (:func:`_calibrate`, a few multiplicative rounds on a fixed sample) such that the *normalised*
  vectors have the fitted mean length and covariance spectrum.

The shipped spectrum was fitted (``python -m tki_sdk.cli.search_spectrum``) to the image features of
a **randomly initialised** open_clip ViT-B-32 (seed 0; no pretrained weights can be had here) on PACS
images: a stand-in for real CLIP embeddings whose variance also sits in a few dozen directions. Its
``source`` field says exactly what was embedded. ``tki-bench search --vectors file.npy`` runs the suite on
real embeddings instead.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from tki_sdk.common.imagefolders import list_images
from tki_sdk.common.progress import progress_bar

__all__ = [
    "EmbeddingSpectrum", "random_clip_features",
    "SPECTRUM_FILE",
    "clustered_unit_vectors",
    "covariance_spectrum",
    "embedding_shaped_vectors",
    "fit_spectrum",
    "load_spectrum",
    "normalize",
]

#: The fitted spectrum shipped with the suite (see the module docstring for its source).
SPECTRUM_FILE = Path(__file__).with_name("search_spectrum.json")


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32; zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# --------------------------------------------------------------------------------------- clustered data
def clustered_unit_vectors(
    n: int,
    dim: int,
    *,
    clusters: int = 1000,
    spread: float = 1.0,
    decay: float = 1.0,
    seed: int = 0,
    stream: int = 0,
    chunk: int = 100_000,
) -> np.ndarray:
    """``n x dim`` float32 unit vectors from a mixture of ``clusters`` Gaussian clusters.

    ``x = normalize(c_j + spread * R (s * g))`` with ``c_j`` uniform on the sphere (the
    same centres for every ``stream`` of one ``seed``), ``g ~ N(0, I)``, ``s_i proportional to
    (i+1)^(-decay/2)`` scaled so that ``E|s * g|^2 = 1`` and ``R`` a random rotation shared by
    all clusters. ``decay=0`` gives isotropic noise (intrinsic dimension = ``dim``, the
    hardest case for any graph index); ``decay=1`` gives a power-law spectrum. ``stream`` selects
    independent draws from the same mixture (0: the indexed vectors, 1: the queries).
    """
    if n < 0 or dim < 1 or clusters < 1:
        raise ValueError("n >= 0, dim >= 1 and clusters >= 1 are required")
    base_rng = np.random.default_rng(seed)
    centres = normalize(base_rng.standard_normal((clusters, dim), dtype=np.float32))
    rot, _ = np.linalg.qr(base_rng.standard_normal((dim, dim)))
    scales = (np.arange(1, dim + 1, dtype=np.float64) ** (-decay / 2.0))
    scales /= np.sqrt((scales**2).sum())
    mix = (rot * scales[None, :]).T.astype(np.float32)  # g @ mix = R(s*g) as a row vector
    rng = np.random.default_rng([seed, 1 + stream])
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        lab = rng.integers(0, clusters, stop - start)
        noise = rng.standard_normal((stop - start, dim), dtype=np.float32) @ mix
        out[start:stop] = normalize(centres[lab] + np.float32(spread) * noise)
    return out


# --------------------------------------------------------------------------------------- the spectrum
@dataclass
class EmbeddingSpectrum:
    """Second-order shape of a set of unit-normalised embeddings (the file :data:`SPECTRUM_FILE`).

    ``mean_norm = |mean(x)|`` over the unit vectors ``x``; ``eigenvalues``: those of their covariance
    ``E[(x - mean)(x - mean)^T]``, descending (``mean_norm^2 + sum(eigenvalues) = 1``); ``source``: what
    was embedded, by which model and weights; ``n_embeddings``: how many rows the fit saw.
    """

    source: str
    n_embeddings: int
    dim: int
    mean_norm: float
    eigenvalues: list[float]

    def scaled_to(self, dim: int) -> tuple[float, np.ndarray]:
        """``(mean_norm, eigenvalues[dim])`` for another width: the spectrum resampled on the relative
        index ``i / dim`` (log-log interpolation), rescaled to the same total variance."""
        lam = np.clip(np.asarray(self.eigenvalues, dtype=np.float64), 1e-12, None)
        if dim != lam.size:
            src = np.log((np.arange(lam.size) + 0.5) / lam.size)
            dst = np.log((np.arange(dim) + 0.5) / dim)
            lam = np.exp(np.interp(dst, src, np.log(lam)))
            lam *= float(np.sum(self.eigenvalues)) / lam.sum()
        return float(self.mean_norm), lam

    def participation_ratio(self) -> float:
        """Effective number of directions, ``(sum lambda)^2 / sum lambda^2``."""
        lam = np.asarray(self.eigenvalues, dtype=np.float64)
        return float(lam.sum() ** 2 / np.sum(lam**2))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        d = asdict(self)
        d["eigenvalues"] = [float(f"{v:.6g}") for v in self.eigenvalues]
        path.write_text(json.dumps(d, indent=1) + "\n")
        return path


def load_spectrum(path: str | Path = SPECTRUM_FILE) -> EmbeddingSpectrum:
    """Read an :class:`EmbeddingSpectrum` JSON file."""
    d = json.loads(Path(path).read_text())
    return EmbeddingSpectrum(source=str(d["source"]), n_embeddings=int(d["n_embeddings"]), dim=int(d["dim"]),
                             mean_norm=float(d["mean_norm"]), eigenvalues=[float(v) for v in d["eigenvalues"]])


def covariance_spectrum(x: np.ndarray) -> tuple[float, np.ndarray]:
    """``(|mean|, descending covariance eigenvalues)`` of the unit-normalised rows of ``x`` (float64)."""
    u = normalize(x).astype(np.float64)
    mean = u.mean(axis=0)
    c = u - mean
    cov = c.T @ c / max(1, u.shape[0])
    lam = np.clip(np.linalg.eigvalsh(cov)[::-1], 0.0, None)
    return float(np.linalg.norm(mean)), lam


def fit_spectrum(embeddings: np.ndarray, source: str) -> EmbeddingSpectrum:
    """Fit :class:`EmbeddingSpectrum` to ``embeddings [N, D]`` (normalised here)."""
    mean_norm, lam = covariance_spectrum(embeddings)
    return EmbeddingSpectrum(source=source, n_embeddings=int(embeddings.shape[0]), dim=int(embeddings.shape[1]),
                             mean_norm=mean_norm, eigenvalues=[float(v) for v in lam])


# --------------------------------------------------------------------------------------- embedding-shaped
def embedding_shaped_vectors(
    n: int,
    dim: int = 512,
    *,
    spectrum: EmbeddingSpectrum | None = None,
    near_duplicates: float = 0.05,
    duplicate_noise: float = 0.03,
    seed: int = 0,
    stream: int = 0,
    chunk: int = 100_000,
) -> np.ndarray:
    """``n x dim`` float32 unit vectors shaped like image embeddings (formula in the module docstring).

    ``spectrum``: the covariance spectrum to follow (default: :data:`SPECTRUM_FILE`); ``near_duplicates``:
    the fraction of rows that are a perturbed copy of an earlier row of the same chunk (re-encoded
    images, crops, reposts); ``duplicate_noise``: the perturbation's scale relative to the spread of the
    data (0.03 gives a cosine of about 0.9999 to the original, closer than ordinary neighbours).
    """
    if n < 0 or dim < 1:
        raise ValueError("n >= 0 and dim >= 1 are required")
    if not 0.0 <= near_duplicates < 1.0:
        raise ValueError("near_duplicates must be in [0, 1)")
    spectrum = spectrum or load_spectrum()
    mean_norm, lam = spectrum.scaled_to(dim)
    base_rng = np.random.default_rng([seed, 7919])
    rot, _ = np.linalg.qr(base_rng.standard_normal((dim, dim)))
    u = rot[:, 1].astype(np.float32)  # the mean lies along the second principal direction (module docstring)
    pre_mean, pre_lam = _calibrate(mean_norm, lam, u, rot)
    mix = (rot * np.sqrt(pre_lam)[None, :]).T.astype(np.float32)  # g @ mix = R diag(sqrt(lam)) g as a row
    mean = (np.float32(pre_mean) * u).astype(np.float32)
    rng = np.random.default_rng([seed, 1 + stream, 7919])
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        m = stop - start
        x = mean + rng.standard_normal((m, dim), dtype=np.float32) @ mix
        n_dup = int(round(near_duplicates * m))
        if n_dup and m > 1:
            rows = rng.choice(np.arange(1, m), size=min(n_dup, m - 1), replace=False)
            src = (rng.random(rows.size) * rows).astype(np.int64)  # an earlier row of the chunk
            noise = rng.standard_normal((rows.size, dim), dtype=np.float32) @ mix
            x[rows] = x[src] + np.float32(duplicate_noise) * noise
        out[start:stop] = normalize(x)
    return out


def _calibrate(mean_norm: float, lam: np.ndarray, u: np.ndarray, rot: np.ndarray, *, rounds: int = 8,
               sample: int = 20_000) -> tuple[float, np.ndarray]:
    """Pre-normalisation mean length and eigenvalues whose normalised vectors have ``mean_norm`` and
    variance ``lam[i]`` along ``rot[:, i]``: normalising a strongly anisotropic Gaussian shrinks its leading
    directions, so the inputs are corrected multiplicatively, a few rounds on a fixed sample."""
    rng = np.random.default_rng(12345)
    g = rng.standard_normal((sample, lam.size), dtype=np.float32)
    m, pre = float(mean_norm), lam.astype(np.float64).copy()
    target = np.clip(lam, 1e-12, None)
    for _ in range(rounds):
        x = normalize(np.float32(m) * u + (g * np.sqrt(pre).astype(np.float32)) @ rot.T.astype(np.float32))
        got_m = float(np.linalg.norm(x.mean(axis=0)))
        var = np.var(x.astype(np.float64) @ rot, axis=0)
        pre *= np.clip(target / np.clip(var, 1e-15, None), 0.25, 4.0)
        m *= mean_norm / max(got_m, 1e-9)
    return m, pre


# --------------------------------------------------------------------------------------- fitting (CLI)
def _embed_images_random_clip(files: Sequence[Path], model_name: str, seed: int, batch: int) -> np.ndarray:
    """Image features of a randomly initialised open_clip model (tki_sdk.train.clip), with the runtime's
    CLIP-exact preprocessing."""
    import torch
    from PIL import Image

    from tki_sdk.runtime.engine.preprocess import Preprocessor
    from tki_sdk.train.clip import load_clip

    clip = load_clip(model_name, None, init_seed=seed)
    pre = Preprocessor.from_metadata(clip.preprocess_cfg)
    feats = []
    bar = progress_bar(len(files), "embed", unit="img")
    with torch.inference_mode():
        for s in range(0, len(files), batch):
            bar.update(len(files[s : s + batch]))
            imgs = []
            for f in files[s : s + batch]:
                with Image.open(f) as im:
                    imgs.append(pre(im))
            x = torch.from_numpy(np.stack(imgs))
            feats.append(clip.model.encode_image(x).float().numpy())
    bar.close()
    return np.concatenate(feats)


def random_clip_features(folder: Path, n: int = 2000, model: str = "ViT-B-32", seed: int = 0,
                         batch_size: int = 32) -> tuple[np.ndarray, str]:
    """Image features of a randomly initialised open_clip ``model`` (``seed``) on ``n`` images sampled
    evenly from ``folder`` (``<domain>/<class>/<file>``), and a ``source`` line saying exactly that.
    ``ValueError`` when the folder holds no images."""
    files = [f.path for f in list_images(folder)]
    if not files:
        raise ValueError(f"no images under {folder}")
    pick = np.linspace(0, len(files) - 1, min(n, len(files))).round().astype(int)
    chosen = [Path(files[i]) for i in pick]
    emb = _embed_images_random_clip(chosen, model, seed, batch_size)
    source = (f"open_clip {model} image features, RANDOM INIT (seed {seed}, no pretrained weights), "
              f"{len(chosen)} PACS images sampled evenly from {Path(folder).name}/ (all domains and classes); "
              "a stand-in for real CLIP embeddings")
    return emb, source
