"""``tki-bench embed``: end to end from image files through the torch-free runtime, against its parts.

For an export folder and a set of image files (default: a seeded PACS sample), in one process:

- **decode + preprocess**: ``Preprocessor.process`` on every file, one thread (images/s per thread);
- **inference**: ``Embedder.embed_pixels`` on the already preprocessed tensors, in batches (the model's rate);
- **end to end**: ``Embedder.embed_images`` on the file paths (decode pool overlapped with inference).

Reported: images/s of each, the end-to-end rate as a fraction of the inference rate (target >= 0.8: decoding
hidden behind inference), and which part limits. With ``--quick`` and no ``--model-dir`` a tiny model is
trained and exported first.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

E2E_TARGET = 0.8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("embed")
    g.add_argument("--model-dir", type=Path, default=None, help="export folder written by tki-export")
    g.add_argument("--precision", default=None, help="artifact to run (default: the engine choice of Embedder(backend=\"auto\"))")
    g.add_argument("--dataset-dir", type=Path, default=None,
                   help="images <root>/<domain>/<class>/<file> (default $TKI_PACS_DIR or PACS beside the repository)")
    g.add_argument("--images", type=int, default=None, help="number of files (default 1000; --quick 64)")
    g.add_argument("--batch-size", type=int, default=32, help="images per model call (default 32)")
    g.add_argument("--threads", type=int, default=2, help="onnxruntime threads (default 2)")
    g.add_argument("--workers", type=int, default=None, help="decode threads of embed_images (default its own)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from tki_sdk.runtime import Embedder

    from tki_sdk.common.cli import UsageError
    from .datasets import DomainDataset, dataset_dir
    from .plots import plot_grouped_bars
    from .results import markdown_table

    from .parity import model_dir_or_quick_export

    model_dir, tmp = model_dir_or_quick_export(args, "embed")
    n = args.images or (64 if args.quick else 1000)
    data = DomainDataset(dataset_dir(args.dataset_dir, required_by="embed"))
    rng = np.random.default_rng(args.seed)
    records = data.records()
    paths = [records[i].path for i in sorted(rng.choice(len(records), size=min(n, len(records)), replace=False))]
    try:
        emb = Embedder(model_dir, precision=args.precision, threads=args.threads)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None

    t0 = time.perf_counter()
    pixels = np.stack([emb.preprocessor.process(p) for p in paths])
    decode_s = time.perf_counter() - t0

    emb.embed_pixels(pixels[: args.batch_size])  # warm-up
    t0 = time.perf_counter()
    for s in range(0, len(paths), args.batch_size):
        emb.embed_pixels(pixels[s : s + args.batch_size])
    infer_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    res = emb.embed_images([str(p) for p in paths], batch_size=args.batch_size, workers=args.workers)
    e2e_s = time.perf_counter() - t0
    if tmp is not None:
        tmp.cleanup()
    if res.errors:
        raise UsageError(f"{len(res.errors)} file(s) failed to embed, first: {res.errors[0]}")
    ref = emb.embed_pixels(pixels)
    same = float(np.abs(res.embeddings - ref).max())

    n_img = len(paths)
    rates = {"decode+preprocess (1 thread)": n_img / decode_s, "inference (tensors)": n_img / infer_s,
             "end to end (files)": n_img / e2e_s}
    fraction = rates["end to end (files)"] / rates["inference (tensors)"]
    limit = "inference" if rates["inference (tensors)"] <= rates["decode+preprocess (1 thread)"] * (args.workers or 2) \
        else "decode + preprocess"
    md = markdown_table(["stage", "images/s"], [[k, f"{v:.1f}"] for k, v in rates.items()])
    md += (f"\n\nend to end = {fraction:.0%} of the inference rate (target >= {E2E_TARGET:.0%}: "
           f"{'met' if fraction >= E2E_TARGET else 'NOT met'}); limited by {limit}; "
           f"{emb.metadata.model_name} {emb.precision} on {emb.backend} ({emb.provider}), {args.threads} threads, {n_img} files")
    stem = getattr(args, "name", None) or ("quick" if args.quick else "results")
    png = plot_grouped_bars(list(rates), {"images/s": list(rates.values())}, args.suite_dir / f"{stem}.png",
                            ylabel="images / s", title=f"{emb.metadata.model_name} {emb.precision}: files to embeddings")
    return {
        "model_dir": str(model_dir), "model_name": emb.metadata.model_name, "precision": emb.precision,
        "engine": emb.backend, "engine_choice": emb.engine_choice.to_dict() if emb.engine_choice else None,
        "provider": emb.provider, "threads": args.threads, "batch_size": args.batch_size, "images": n_img,
        "rates": rates, "e2e_fraction_of_inference": fraction, "target": E2E_TARGET,
        "target_met": fraction >= E2E_TARGET, "limited_by": limit, "embed_images_stats": res.stats,
        "max_abs_diff_e2e_vs_tensors": same, "markdown": md, "plots": [str(png)],
    }
