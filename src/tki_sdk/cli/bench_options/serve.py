"""``tki-bench serve``'s options: what :func:`tki_sdk.benchmarks.serve.run` reads from its ``args``."""
from __future__ import annotations

import argparse
from pathlib import Path

from tki_sdk.cli.bench_options.parsers import int_list


__all__ = ["add_arguments"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``tki-bench serve`` (the defaults :func:`tki_sdk.benchmarks.serve.run` reads)."""
    g = parser.add_argument_group("serve")
    g.add_argument("--model-dir", type=Path, default=None, help="export folder written by tki-export")
    g.add_argument("--precision", default=None, help="artifact to serve (default int8 when exported, else the default)")
    g.add_argument("--dataset-dir", type=Path, default=None,
                   help="images <root>/<domain>/<class>/<file> (default $TKI_PACS_DIR or PACS beside the repository)")
    g.add_argument("--gallery-images", type=int, default=None, help="gallery size (default 2000; --quick 96)")
    g.add_argument("--query-domain", default="sketch", help="domain the query images come from (default sketch)")
    g.add_argument("--queries", type=int, default=64, help="distinct query files, sent round-robin (default 64)")
    g.add_argument("--levels", type=int_list, default="1,4,16,64", help="concurrency levels (default 1,4,16,64)")
    g.add_argument("--level-seconds", type=float, default=None, help="seconds per level (default 20; --quick 3)")
    g.add_argument("--soak-seconds", type=float, default=None,
                   help="soak duration with a gallery reload halfway (default 300; --quick 8; 0 skips it)")
    g.add_argument("--soak-concurrency", type=int, default=16, help="requests in flight during the soak (default 16)")
    g.add_argument("--max-batch", type=int, default=32, help="--max-batch of the batching service (default 32)")
    g.add_argument("--max-wait-ms", type=float, default=5.0, help="--max-wait-ms of the service (default 5)")
    g.add_argument("--threads", type=int, default=2, help="onnxruntime threads of the service (default 2)")
    g.add_argument("--workers", type=int, default=2, help="decode threads of the service (default 2)")
    g.add_argument("-k", type=int, default=10, help="hits per search (default 10)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    g.add_argument("--vector-gallery", type=int, default=None,
                   help="also serve vector queries (JSON) on a gallery of this many embedding-shaped vectors, once "
                        "per HNSW backend (default 200000; --quick 5000; 0 skips it)")
    g.add_argument("--vector-levels", type=int_list, default="1,4,16", help="concurrency levels of the vector queries (default 1,4,16)")
    g.add_argument("--screenshot", type=Path, default=None,
                   help="also save a screenshot of the page after a sketch search (needs playwright + chromium)")
