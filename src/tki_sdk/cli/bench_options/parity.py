"""``tki-bench parity``'s options: what :func:`tki_sdk.benchmarks.parity.run` reads from its ``args``."""
from __future__ import annotations

import argparse
from pathlib import Path

from tki_sdk.benchmarks.parity import DEFAULT_PER_CLASS, QUICK_PER_CLASS

__all__ = ["add_arguments"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``tki-bench parity`` (the defaults :func:`tki_sdk.benchmarks.parity.run` reads)."""
    g = parser.add_argument_group("parity")
    g.add_argument("--model-dir", type=Path, default=None, help="export folder written by tki-export")
    g.add_argument("--dataset-dir", type=Path, default=None,
                   help="images <root>/<domain>/<class>/<file> (default: PACS beside the repository)")
    g.add_argument("--per-class", type=int, default=None,
                   help=f"images per (domain, class) (default {DEFAULT_PER_CLASS}; --quick {QUICK_PER_CLASS})")
    g.add_argument("--precision", default=None, help="artifacts to check, e.g. fp32,int8 (default: all in tki.json)")
    g.add_argument("--threads", type=int, default=2, help="onnxruntime threads (default 2)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
