"""``tki-bench search``'s options: what :func:`tki_sdk.benchmarks.search.run` reads from its ``args``."""
from __future__ import annotations

import argparse
from pathlib import Path

from tki_sdk.benchmarks.search import GALLERY_VARIANTS, INDEXES, TARGET_RECALL
from tki_sdk.cli.bench_options.parsers import int_list, fraction_list, choice_list

__all__ = ["add_arguments"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``tki-bench search`` (the defaults :func:`tki_sdk.benchmarks.search.run` reads)."""
    g = parser.add_argument_group("search")
    g.add_argument("--data", type=choice_list(("embedding", "clustered"), "--data"), default=None,
                   help="synthetic data sets: embedding (shaped like image embeddings; default) and/or clustered")
    g.add_argument("--sizes", type=int_list, default=None,
                   help="gallery sizes (default 1000000; --quick: 20000); 1e5 accepted")
    g.add_argument("--dim", type=int, default=None, help="vector dimension (default 512; --quick: 256)")
    g.add_argument("--clusters", type=int, default=1000, help="clustered data: Gaussian clusters (default 1000)")
    g.add_argument("--spread", type=float, default=1.0, help="clustered data: noise norm relative to the centres (default 1.0)")
    g.add_argument("--decay", type=float, default=1.0,
                   help="clustered data: noise spectrum exponent, 0 isotropic (hardest), 1 power law (default)")
    g.add_argument("--near-duplicates", type=float, default=0.05,
                   help="embedding data: fraction of near-duplicate rows (default 0.05)")
    g.add_argument("--spectrum", type=Path, default=None, help="embedding data: spectrum file (default: the shipped fit)")
    g.add_argument("--queries", type=int, default=None, help="held-out queries (default 1000; --quick: 300)")
    g.add_argument("--k", type=int, default=10, help="neighbours per query for recall@k (default 10)")
    g.add_argument("--indexes", type=choice_list(INDEXES, "--indexes"), default=list(INDEXES),
                   help=f"what to compare (default {','.join(INDEXES)})")
    g.add_argument("--dtypes", type=choice_list(tuple(GALLERY_VARIANTS), "--dtypes"),
                   default=["f32", "f16", "i8", "hnswlib"],
                   help="Gallery variants (default f32,f16,i8,hnswlib: usearch storages, i8 re-ranked on a float16 "
                   "copy; hnswlib, faiss: those backends, f32); filters are measured on the first")
    g.add_argument("--connectivity", type=int_list, default=None,
                   help="Gallery HNSW M values (default: each backend's, IndexConfig.for_backend)")
    g.add_argument("--expansion-add", type=int, default=128,
                   help="HNSW construction breadth for the Gallery and FAISS HNSW (efConstruction; default 128)")
    g.add_argument("--expansion-search", type=int_list, default=None,
                   help="HNSW ef values swept, Gallery and FAISS (default 16,24,...,512)")
    g.add_argument("--faiss-max-nlist", type=int, default=4096, help="cap on FAISS IVF list count (default 4096)")
    g.add_argument("--filters", type=fraction_list, default=[0.01, 0.1, 0.5],
                   help="where-filter fractions measured on the first Gallery (default 0.01,0.1,0.5; '' for none)")
    g.add_argument("--filter-queries", type=int, default=300, help="queries for the filter figures (default 300)")
    g.add_argument("--target-recall", type=float, default=TARGET_RECALL, help="self-tuning target (default 0.99)")
    g.add_argument("--threads", type=int, default=None, help="threads for every index and BLAS (default: usable CPUs)")
    g.add_argument("--exact-usearch-queries", type=int, default=200, help="queries timed with usearch exact search (default 200)")
    g.add_argument("--min-time", type=float, default=0.3, help="seconds of repeated searches per QPS figure (default 0.3)")
    g.add_argument("--vectors", type=Path, default=None,
                   help="real embeddings (.npy, [N,D]); the last --queries rows become the queries; --sizes ignored")
    g.add_argument("--query-vectors", type=Path, default=None, help="queries for --vectors (.npy) instead of held-out rows")
    g.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    g.add_argument("--name", default=None, help="result file stem (default: quick, or n<largest>_d<dim>)")
