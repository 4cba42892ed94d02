"""``tki-bench accuracy``'s options: what :func:`tki_sdk.benchmarks.accuracy.run` reads from its ``args``."""
from __future__ import annotations

import argparse
from pathlib import Path

from tki_sdk.benchmarks.accuracy import QUICK_PER_CLASS, QUICK_VANILLA, TEXT_QUERIES

__all__ = ["add_arguments"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``tki-bench accuracy`` (the defaults :func:`tki_sdk.benchmarks.accuracy.run` reads)."""
    g = parser.add_argument_group("accuracy")
    g.add_argument("--dataset-dir", type=Path, default=None,
                   help="<root>/<domain>/<class>/<image> (or <root>/images/...); default $TKI_PACS_DIR, else ../shared/data/pacs/images beside the repository")
    g.add_argument("--model-dir", type=Path, action="append", default=None,
                   help="tki-export folder (repeatable); every precision in --precision is measured via the runtime Embedder")
    g.add_argument("--precision", default=None, help="artifacts of each --model-dir to measure, e.g. fp32,int8 (default: all in tki.json)")
    g.add_argument("--checkpoint", type=Path, default=None, help="tki train folder: torch TKIModel (reference for exported artifacts)")
    g.add_argument("--vanilla", default=None, metavar="MODEL",
                   help=f"also measure vanilla CLIP (head none) of this open_clip model (--quick default: {QUICK_VANILLA} if no model is given)")
    g.add_argument("--pretrained", default=None, help="CLIP weights for --vanilla / --checkpoint (open_clip tag or local file)")
    g.add_argument("--per-class", type=int, default=None, help=f"images per (domain, class), seeded sample (default all; --quick {QUICK_PER_CLASS})")
    g.add_argument("--domains", default=None, help="comma-separated subset of domains (default all)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    g.add_argument("--batch-size", type=int, default=64, help="images per embedding call (default 64)")
    g.add_argument("--k", type=int, default=200, help="k of mAP@k and Prec@k (default 200, the paper's)")
    g.add_argument("--no-full-map", action="store_true",
                   help="skip whole-gallery mAP (sorts every gallery row); keep mAP@k / Prec@k -- for DomainNet-sized galleries")
    g.add_argument("--device", default="cpu", help="torch device for --checkpoint / --vanilla (default cpu)")
    g.add_argument("--metrics", default="cos,ip,poincare",
                   help="how raw ball embeddings (--checkpoint, or an export made with --embedding ball) are scored, "
                        "each on the same embeddings (default cos,ip,poincare; unit-vector exports: cos only)")
    g.add_argument("--gallery", default="f16,i8",
                   help="also search through a built HNSW Gallery of these storage types and report the gap to "
                        "exact search (default f16,i8; 'none' to skip)")
    g.add_argument("--text", default=",".join(TEXT_QUERIES),
                   help="text-to-image rows: each class name a query, each domain a gallery, for these query "
                        f"constructions (default {','.join(TEXT_QUERIES)}; 'none' to skip); methods without "
                        "text are listed")
