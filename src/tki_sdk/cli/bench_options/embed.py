"""``tki-bench embed``'s options: what :func:`tki_sdk.benchmarks.embed.run` reads from its ``args``."""
from __future__ import annotations

import argparse
from pathlib import Path


__all__ = ["add_arguments"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``tki-bench embed`` (the defaults :func:`tki_sdk.benchmarks.embed.run` reads)."""
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
    g.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="local: the stages of one process (default); ray: tki embed with one process vs Ray Data")
    g.add_argument("--actors", type=int, default=1, help="--engine ray: model actors (default 1)")
    g.add_argument("--cpus-per-actor", type=float, default=1.0, help="--engine ray: CPUs per actor (default 1)")
    g.add_argument("--ray-cpus", type=int, default=None, help="--engine ray: CPUs of the local Ray (default all)")
    g.add_argument("--ray-decode", default="auto", choices=["auto", "actor", "tasks"],
                   help="--engine ray: where images are decoded (default auto: in the actors on one node)")
    g.add_argument("--repeats", type=int, default=2,
                   help="--engine ray: interleaved (one process, Ray) pairs; the ratio is of the medians (default 2)")
    g.add_argument("--note", default="", help="a line recorded with the result (e.g. the machine was shared)")
