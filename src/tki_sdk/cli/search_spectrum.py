"""``python -m tki_sdk.cli.search_spectrum``: refit the embedding spectrum the search suite's
embedding-shaped data is drawn from (:mod:`tki_sdk.benchmarks.search_data`)."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tki_sdk.benchmarks.search_data import SPECTRUM_FILE, fit_spectrum, random_clip_features
from tki_sdk.cli.base import OneLineParser, configure_logging, run_main
from tki_sdk.common.errors import UsageError, one_line

__all__ = ["main"]

PROG = "python -m tki_sdk.cli.search_spectrum"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=PROG,
        description="Fit the embedding spectrum file to image features (random-init CLIP on an image folder, "
                    "or a .npy of real embeddings).",
        epilog=f"examples:\n  {PROG} --images /data/pacs/images --n 2000\n"
               f"  {PROG} --embeddings clip_feats.npy --source 'CLIP ...'",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, help="image folder (<domain>/<class>/<file>)")
    p.add_argument("--embeddings", type=Path, help=".npy [N, D] of embeddings instead of --images")
    p.add_argument("--source", default=None, help="what the embeddings are (required with --embeddings)")
    p.add_argument("--n", type=int, default=2000, help="images sampled evenly from the folder (default 2000)")
    p.add_argument("--model", default="ViT-B-32", help="open_clip architecture (random init; default ViT-B-32)")
    p.add_argument("--seed", type=int, default=0, help="random-init seed (default 0)")
    p.add_argument("--out", type=Path, default=SPECTRUM_FILE, help=f"output (default {SPECTRUM_FILE.name})")
    p.add_argument("--save-embeddings", type=Path, default=None, help="also save the features as .npy")
    return p


def _body(argv: Sequence[str] | None) -> int:
    a = build_parser().parse_args(argv)
    configure_logging()
    if a.embeddings is not None:
        if not a.source:
            raise UsageError("--source is required with --embeddings")
        try:
            emb, source = np.load(a.embeddings, allow_pickle=False), a.source
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot read --embeddings {a.embeddings}: {one_line(e)}") from None
    elif a.images is not None:
        try:
            emb, source = random_clip_features(a.images, a.n, a.model, a.seed)
        except ValueError as e:
            raise UsageError(str(e)) from None
    else:
        raise UsageError("give --images or --embeddings")
    if a.save_embeddings:
        np.save(a.save_embeddings, emb)
    spec = fit_spectrum(emb, source)
    spec.save(a.out)
    print(f"{a.out}: dim {spec.dim}, mean_norm {spec.mean_norm:.3f}, participation ratio "
          f"{spec.participation_ratio():.1f}, top-5 eigenvalues {np.round(spec.eigenvalues[:5], 4).tolist()}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(PROG, lambda: _body(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
