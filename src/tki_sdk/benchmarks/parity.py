"""``tki-bench parity``: every exported artifact against ``TKIModel.encode_image`` (float64) on a dataset sample.

For each artifact listed in ``tki.json``: min / mean cosine and max abs error over real images (a seeded
sample of every (domain, class) of the dataset, through the runtime's CLIP-exact preprocessing) and random
tensors, at batch 1 and a larger batch -- the same validator ``tki-export`` runs, on more and more varied
images. The plot shows "digits of agreement", -log10(1 - min cosine), against each threshold's.

With ``--quick`` and no ``--model-dir``, a tiny random-init model is trained and exported first.
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from tki_sdk.benchmarks.datasets import DomainDataset, dataset_dir
from tki_sdk.benchmarks.results import markdown_table
from tki_sdk.common.errors import UsageError
from tki_sdk.common.model_metadata import ModelMetadata
from tki_sdk.benchmarks.options import SuiteOptions

QUICK_PER_CLASS = 1
DEFAULT_PER_CLASS = 4


def _quick_export(workdir: Path) -> Path:
    from tki_sdk.export.pipeline import ExportConfig, run_export
    from tki_sdk.train.trainer import TrainConfig, train

    ckpt = train(TrainConfig(model_name="TKI-Tiny-ViT", classes=["dog", "horse", "house"], out=str(workdir / "ckpt"),
                             prompts=4, steps_expand=3, steps_aggregate=10, progress=False))
    # both int8 schemes: on a CPU without VNNI the tiny model's dynamic int8 alone reached min cosine 0.959 on
    # one PACS image (per-batch activation ranges), static QDQ 0.9997
    run_export(ExportConfig(out=workdir / "model", checkpoint=ckpt, precisions=("fp32", "fp16", "int8"),
                            time_torch=False, progress=False))
    return workdir / "model"


def model_dir_or_quick_export(args: SuiteOptions, suite: str) -> tuple[Path, Any]:
    """``--model-dir``, or with ``--quick`` a tiny export in a temporary folder (returned so the caller can
    ``cleanup()`` it; None otherwise). Without either, a one-line :class:`UsageError`."""

    if args.model_dir is not None:
        return Path(args.model_dir), None
    if not args.quick:
        raise UsageError(f"{suite} needs --model-dir <export folder> (or --quick to export a tiny model)")
    tmp = tempfile.TemporaryDirectory(prefix=f"tki-{suite}-")
    return _quick_export(Path(tmp.name)), tmp


def _digits(cos: float) -> float:
    return 16.0 if cos >= 1.0 else -math.log10(max(1.0 - cos, 1e-16))


def run(args: SuiteOptions) -> dict[str, Any]:

    from tki_sdk.benchmarks.accuracy import describe_weights
    from tki_sdk.benchmarks.plots import plot_grouped_bars
    from tki_sdk.export.pipeline import validate_export
    from tki_sdk.runtime.engine.preprocess import Preprocessor

    model_dir, tmp = model_dir_or_quick_export(args, "parity")
    try:
        meta = ModelMetadata.load(model_dir)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None
    per_class = args.per_class or (QUICK_PER_CLASS if args.quick else DEFAULT_PER_CLASS)
    data = DomainDataset(dataset_dir(args.dataset_dir, required_by="parity")).sample(per_class, seed=args.seed)
    prep = Preprocessor.from_metadata(meta)
    records = data.records()
    images = prep.batch([r.path for r in records])
    precisions = tuple(p.strip() for p in args.precision.split(",")) if args.precision else None
    results = validate_export(model_dir, images=images.astype(np.float32),
                              image_source=f"{data.root} ({per_class} per domain and class, seed {args.seed})",
                              threads=args.threads, precisions=precisions, raise_on_failure=False)
    if tmp is not None:
        tmp.cleanup()
    if not results:
        raise UsageError(f"{model_dir} lists no ONNX artifact to check")

    rows, table = [], []
    for key, r in results.items():
        d = r.to_dict()
        rows.append({"artifact": key, **d})
        table.append([key, r.file, f"{r.min_cosine:.6f}", f"{r.mean_cosine:.6f}", f"{r.max_abs_error:.2e}",
                      f"{r.threshold}", "pass" if r.passed else "FAIL"])
    md = markdown_table(["artifact", "file", "min cosine", "mean cosine", "max abs err", "threshold", "parity"], table)
    png = plot_grouped_bars(
        [r["artifact"] for r in rows],
        {"measured": [_digits(r["min_cosine"]) for r in rows], "threshold": [_digits(r["threshold"]) for r in rows]},
        args.suite_dir / f"{getattr(args, 'name', None) or ('quick' if args.quick else 'results')}.png",
        ylabel="-log10(1 - min cosine)", title=f"parity vs torch float64: {meta.model_name}",
    )
    weights = describe_weights(meta.weights, meta.checkpoint)
    return {
        "model_dir": str(model_dir),
        "model_name": meta.model_name,
        "weights": weights,
        "images": len(records),
        "per_class": per_class,
        "artifacts": rows,
        "passed": all(r.passed for r in results.values()),
        "markdown": md,
        "plots": [str(png)],
    }

