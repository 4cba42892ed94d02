"""``tki-bench throughput``'s options: what :func:`tki_sdk.benchmarks.throughput.run` reads from its ``args``."""
from __future__ import annotations

import argparse
from pathlib import Path

from tki_sdk.cli.bench_options.parsers import int_list

__all__ = ["add_arguments"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``tki-bench throughput`` (the defaults :func:`tki_sdk.benchmarks.throughput.run` reads)."""
    g = parser.add_argument_group("throughput")
    g.add_argument("--model", default="ViT-B-32", help="open_clip architecture, random weights (default ViT-B-32)")
    g.add_argument("--head", choices=["tki", "none"], default="tki",
                   help="tki: random-init hyperbolic head on top (default); none: vanilla CLIP")
    g.add_argument("--model-dir", type=Path, default=None,
                   help="an existing tki-export folder to measure (skips exporting; torch model from its tki.json)")
    g.add_argument("--batch-size", type=int, default=16, help="main batch size (default 16)")
    g.add_argument("--sweep", type=int_list, default=None, help="extra batch sizes (default 1,8,32; --quick: none)")
    g.add_argument("--threads", type=int, default=2, help="intra-op threads for every backend (default 2)")
    g.add_argument("--rounds", type=int, default=None,
                   help="interleaved rounds at the main batch (default 20; --quick: 6); sweep sizes get a third")
    g.add_argument("--precisions", default="fp32,fp16,int8", help="ONNX precisions to export / measure")
    g.add_argument("--no-profile", action="store_true", help="skip the onnxruntime per-node profile (head share)")
    g.add_argument("--keep-export", action="store_true", help="keep the export in <out-dir>/throughput/export_<model>")
    g.add_argument("--int8-variants", action="store_true",
                   help="also quantise the fp32 graph each way the int8 export could (dynamic / static QDQ, "
                        "per-channel, U8S8 / S8S8, 7 / 8-bit weights) and report parity, img/s and profile of each")
