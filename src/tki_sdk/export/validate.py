"""Parity of exported artifacts with ``TKIModel.encode_image`` computed in float64.

Every artifact runs on the same inputs: real images (``--calib-images``, PACS, or generated images when
neither exists) through the model's exact preprocessing, and standard-normal random tensors; each group at
batch 1 (its first rows) and at a larger batch (all rows, in chunks). For every output row

    cos_i = <y_i, r_i> / (||y_i|| ||r_i||),   err = max_ij |y_ij - r_ij|

against the float64 reference ``r``. An artifact passes when every output is finite and
``min_i cos_i >= threshold`` (fp32 0.99999, fp16 0.999, int8 0.99, TensorRT fp16 0.999).
:class:`ParityResult` keeps min / mean cosine, max abs error and the worst group, and its
:meth:`~ParityResult.failure_line` names artifact, output, measured value and tolerance.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tki_sdk.common.artifacts import ARTIFACT_KINDS
from tki_sdk.common.model_metadata import OUTPUT_NAME, PreprocessConfig
from tki_sdk.export.fused import reference_embeddings

__all__ = [
    "THRESHOLDS",
    "ParityResult",
    "ParityError",
    "ValidationInputs",
    "build_inputs",
    "generated_images",
    "compare",
    "validate_runner",
    "OrtRunner",
    "time_runner",
    "measure_interleaved",
]

#: Minimum per-embedding cosine to torch float64, per artifact kind: the artifact table's thresholds
#: (:data:`tki_sdk.common.artifacts.ARTIFACT_KINDS`), as a dict a caller may adjust.
THRESHOLDS: dict[str, float] = {k: a.parity_threshold for k, a in ARTIFACT_KINDS.items()}


def threshold_for(artifact: str) -> float:
    """Threshold of an artifact key (``int8`` candidates like ``int8:dynamic`` use the ``int8`` one)."""
    base = artifact.split(":", 1)[0]
    if base not in THRESHOLDS:
        raise KeyError(f"no parity threshold for artifact {artifact!r}")
    return THRESHOLDS[base]


class ParityError(RuntimeError):
    """An artifact missed its parity threshold; ``str()`` is the one-line report."""

    def __init__(self, results: Sequence["ParityResult"]) -> None:
        self.results = list(results)
        super().__init__("; ".join(r.failure_line() for r in self.results))


@dataclass
class ValidationInputs:
    """Named input groups (``images``, ``random``) with their float64 reference embeddings."""

    groups: dict[str, np.ndarray]
    reference: dict[str, np.ndarray]
    batch_sizes: tuple[int, int]
    sources: dict[str, str] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {
            "reference": "TKIModel.encode_image in float64 (torch)",
            "batch_sizes": list(self.batch_sizes),
            "groups": {k: {"count": int(v.shape[0]), "source": self.sources.get(k, k)} for k, v in self.groups.items()},
        }


@dataclass
class ParityResult:
    """Parity of one artifact (see module docstring)."""

    artifact: str
    file: str
    threshold: float
    min_cosine: float
    mean_cosine: float
    max_abs_error: float
    finite: bool
    worst: str
    per_group: dict[str, dict[str, float]]
    batch_sizes: list[int]
    output: str = OUTPUT_NAME
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.error is None and self.finite and self.min_cosine >= self.threshold

    def failure_line(self) -> str:
        if self.error:
            return f"parity: {self.artifact} ({self.file}) could not run: {self.error}"
        if not self.finite:
            return (f"parity: {self.artifact} ({self.file}) output '{self.output}' has non-finite values "
                    f"(on {self.worst}); tolerance: all finite, min cosine >= {self.threshold}")
        return (f"parity: {self.artifact} ({self.file}) output '{self.output}' min cosine {self.min_cosine:.6f} "
                f"< tolerance {self.threshold} (on {self.worst}; max abs error {self.max_abs_error:.3g})")

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file, "output": self.output, "min_cosine": self.min_cosine, "mean_cosine": self.mean_cosine,
            "max_abs_error": self.max_abs_error, "threshold": self.threshold, "pass": self.passed,
            "finite": self.finite, "worst": self.worst, "batch_sizes": self.batch_sizes,
            "per_group": self.per_group, **({"error": self.error} if self.error else {}),
            **({"notes": self.notes} if self.notes else {}),
        }


# ------------------------------------------------------------------------------------------------ inputs
def generated_images(n: int, preprocess_cfg: dict[str, Any], seed: int = 0) -> np.ndarray:
    """``n`` synthetic photographs-like images (smooth colour fields, shapes, noise, strokes) rendered with
    Pillow at varied sizes and aspect ratios and preprocessed as real files are: the stand-in when no image
    folder is available. Deterministic in ``seed``."""
    from PIL import Image, ImageDraw, ImageFilter

    from tki_sdk.runtime.engine.preprocess import Preprocessor

    pre = Preprocessor(PreprocessConfig.from_dict(preprocess_cfg))
    rng = np.random.default_rng(seed)
    h, w = pre.size
    out = np.empty((n, 3, h, w), dtype=np.float32)
    for i in range(n):
        W, H = int(rng.integers(160, 420)), int(rng.integers(160, 420))
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
        base = np.stack([
            127 + 100 * np.sin(xx / rng.uniform(8, 60) + rng.uniform(0, 6)) * np.cos(yy / rng.uniform(8, 60)),
            127 + 100 * np.cos((xx + yy) / rng.uniform(10, 80)),
            127 + 100 * np.sin(yy / rng.uniform(8, 60) + rng.uniform(0, 6)),
        ], axis=-1)
        base += rng.normal(0, 12, size=base.shape)
        img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(2, 7))):
            x0, y0 = int(rng.integers(0, W)), int(rng.integers(0, H))
            x1, y1 = x0 + int(rng.integers(10, W // 2 + 11)), y0 + int(rng.integers(10, H // 2 + 11))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            if rng.random() < 0.5:
                draw.ellipse([x0, y0, x1, y1], fill=colour)
            else:
                draw.line([x0, y0, x1, y1], fill=colour, width=int(rng.integers(1, 9)))
        if rng.random() < 0.3:
            img = img.convert("L").convert("RGB")  # sketch-like greyscale
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 1.5))))
        pre(img, out=out[i])
    return out


def build_inputs(
    model: Any,
    images: np.ndarray,
    *,
    image_source: str,
    n_random: int | None = None,
    large_batch: int = 8,
    seed: int = 0,
) -> ValidationInputs:
    """Validation groups ``images`` (given, preprocessed) and ``random`` (N(0,1), same count unless given),
    with float64 references from :func:`tki_sdk.export.fused.reference_embeddings`."""

    n_random = int(images.shape[0] if n_random is None else n_random)
    rnd = np.random.default_rng(seed).standard_normal((n_random, *images.shape[1:])).astype(np.float32)
    groups = {"images": np.ascontiguousarray(images, dtype=np.float32), "random": rnd}
    ref = {k: reference_embeddings(model, v) for k, v in groups.items()}
    return ValidationInputs(groups, ref, (1, int(large_batch)),
                            {"images": image_source, "random": f"standard normal, seed {seed}"})


# ------------------------------------------------------------------------------------------------ running
class OrtRunner:
    """``run(x[N,3,H,W] float32) -> [N,D] float32`` through the runtime's
    :class:`~tki_sdk.runtime.engine.ort_session.OrtSession` (the code path the Embedder runs): all graph
    optimisations, ``threads`` intra-op threads, one inter-op thread; CPU unless ``providers`` say otherwise."""

    def __init__(self, path: str | os.PathLike, threads: int | None = 2, providers: Sequence[str] | None = None) -> None:
        from tki_sdk.runtime.engine.ort_session import OrtSession, SessionConfig

        self.path = Path(path)
        cfg = SessionConfig(device="auto" if providers else "cpu", providers=list(providers) if providers else None,
                            threads=int(threads) if threads else None, io_binding=False)
        self.ort = OrtSession(path, cfg)
        self.session = self.ort.session
        self.input_name = self.ort.input_name
        self.output_name = self.ort.output_name

    def run(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.ort.run(np.ascontiguousarray(x, dtype=np.float32)), dtype=np.float32)


def _cosines(y: np.ndarray, r: np.ndarray) -> np.ndarray:
    y = y.astype(np.float64)
    num = (y * r).sum(axis=1)
    den = np.linalg.norm(y, axis=1) * np.linalg.norm(r, axis=1)
    return num / np.maximum(den, 1e-300)


def compare(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per-group ``min_cosine``, ``mean_cosine``, ``max_abs_error``, ``finite`` of outputs vs references."""
    res: dict[str, dict[str, float]] = {}
    for k, y in outputs.items():
        r = reference[k.split("@", 1)[0]][: y.shape[0]]
        if y.shape != r.shape:
            raise ValueError(f"output {k} has shape {list(y.shape)}, reference {list(r.shape)}")
        finite = bool(np.isfinite(y).all())
        cos = _cosines(y, r) if finite else np.array([-np.inf])
        res[k] = {
            "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
            "max_abs_error": float(np.abs(y - r).max()) if finite else float("inf"), "finite": finite,
            "rows": int(y.shape[0]),
        }
    return res


def validate_runner(
    artifact: str,
    file: str,
    run: Callable[[np.ndarray], np.ndarray],
    inputs: ValidationInputs,
    threshold: float | None = None,
    max_batch: int | None = None,
) -> ParityResult:
    """Run ``run`` on every group at batch 1 (first two rows) and at the large batch; compare (see module
    docstring). Exceptions from ``run`` become a failed result with ``error`` set."""
    thr = threshold_for(artifact) if threshold is None else float(threshold)
    b1, bl = inputs.batch_sizes
    if max_batch:
        bl = min(bl, int(max_batch))
    outputs: dict[str, np.ndarray] = {}
    try:
        for name, x in inputs.groups.items():
            outputs[f"{name}@batch{b1}"] = np.concatenate([run(x[i:i + b1]) for i in range(min(2, x.shape[0]))])
            outputs[f"{name}@batch{bl}"] = np.concatenate([run(x[i:i + bl]) for i in range(0, x.shape[0], bl)])
    except Exception as e:  # noqa: BLE001 - any runtime failure is a failed validation
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return ParityResult(artifact, file, thr, float("nan"), float("nan"), float("nan"), False, "-", {},
                            [b1, bl], error=f"{type(e).__name__}: {first[:300]}")
    per = compare(outputs, inputs.reference)
    finite = all(v["finite"] for v in per.values())
    worst = min(per, key=lambda k: per[k]["min_cosine"])
    rows = sum(v["rows"] for v in per.values())
    mean = sum(v["mean_cosine"] * v["rows"] for v in per.values()) / rows
    return ParityResult(
        artifact=artifact, file=file, threshold=thr, min_cosine=per[worst]["min_cosine"], mean_cosine=float(mean),
        max_abs_error=max(v["max_abs_error"] for v in per.values()), finite=finite, worst=worst, per_group=per,
        batch_sizes=[b1, bl],
    )


def time_runner(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, *, min_time: float = 1.0,
                max_repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median and best wall time of ``run(x)`` over up to ``max_repeats`` runs (stops after ``min_time`` s);
    returns ``ms_per_image`` (median), ``best_ms_per_image``, ``repeats``."""
    for _ in range(warmup):
        run(x)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_repeats and (len(times) < 2 or time.perf_counter() - start < min_time):
        t0 = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - t0)
    n = x.shape[0]
    return {"ms_per_image": 1000 * float(np.median(times)) / n, "best_ms_per_image": 1000 * float(min(times)) / n,
            "repeats": len(times), "batch_size": int(n)}


def measure_interleaved(
    fns: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each function: ``warmup`` calls each, then ``rounds`` rounds of one call per function
    in turn (so load changes on a shared machine hit every function alike)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(max(1, rounds)):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times
