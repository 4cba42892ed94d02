"""``tki-bench train``'s options: what :func:`tki_sdk.benchmarks.train.run` reads from its ``args``."""
from __future__ import annotations

import argparse

from tki_sdk.common.imagefolders import PACS_CLASSES

__all__ = ["add_arguments"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``tki-bench train`` (the defaults :func:`tki_sdk.benchmarks.train.run` reads)."""
    p.add_argument("--model", default="ViT-B-32", help="open_clip architecture (random init unless --pretrained)")
    p.add_argument("--pretrained", default=None, help="open_clip tag or local weights file")
    p.add_argument("--prompts", type=int, default=20, help="P (default 20)")
    p.add_argument("--classes", default=",".join(PACS_CLASSES), help="comma-separated class names (default PACS)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 5; --quick 2)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--device", default="cpu")
