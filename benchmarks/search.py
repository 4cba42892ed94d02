"""Search suite: usearch HNSW recall@10 and speed against exact search.

What it measures, for every size ``n`` (and for real embeddings from a ``.npy`` file):

* Data: ``n`` unit vectors of dimension ``d`` drawn from a mixture of ``clusters``
  Gaussian clusters on the sphere (seeded; see :func:`clustered_unit_vectors`), plus
  ``queries`` held-out query vectors from the same mixture (not in the index).
* Ground truth: exact top-``k`` by cosine, numpy brute force (gallery chunks of
  ``Q x chunk`` matmuls + ``argpartition``, merged). Its wall time gives the numpy
  exact-search QPS (BLAS limited to ``--threads`` when threadpoolctl is present).
* usearch exact search (``Index.search(..., exact=True)``) on a query subset: its QPS,
  and its recall@k against the numpy ground truth (1.0 up to float rounding).
* For every dtype (f32, f16, i8) and connectivity ``M``: build time -> build rate
  (vectors/s), ``index.memory_usage`` and ``serialized_length``; then for every
  ``expansion_search``: recall@k against the ground truth and batch QPS (all queries
  in one ``search`` call, ``threads`` workers, repeated until ``--min-time``).
* Speed-up = HNSW QPS / exact QPS, against the *faster* of the two exact baselines.

Target (ARCHITECTURE.md, "Targets"): recall@10 >= 0.99 at >= 50x exact-search QPS at 1M x 512. The
summary says whether some configuration reaches it at the largest size run (and that
the target's size is 1M when the largest size run is smaller).

``recall@k = |approx top-k  intersect  exact top-k| / k``, averaged over queries.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .results import markdown_table

__all__ = [
    "clustered_unit_vectors",
    "exact_topk",
    "recall_at_k",
    "run_search_benchmark",
    "add_arguments",
    "run",
    "TARGET_RECALL",
    "TARGET_SPEEDUP",
    "TARGET_N",
]

TARGET_RECALL = 0.99
TARGET_SPEEDUP = 50.0
TARGET_N = 1_000_000

FULL_DEFAULTS = {"sizes": [10_000, 100_000, 1_000_000], "dim": 512, "queries": 1000,
                 "connectivity": [16, 32], "expansion_search": [16, 32, 64, 128, 256, 512]}
QUICK_DEFAULTS = {"sizes": [10_000, 50_000], "dim": 512, "queries": 500,
                  "connectivity": [16], "expansion_search": [16, 32, 64, 128, 256]}


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@contextlib.contextmanager
def _blas_threads(n: int) -> Iterator[None]:
    """Limit BLAS threads to ``n`` (threadpoolctl when installed; otherwise unchanged)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        yield
        return
    with threadpool_limits(limits=n, user_api="blas"):
        yield


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def clustered_unit_vectors(
    n: int,
    dim: int,
    *,
    clusters: int = 1000,
    spread: float = 1.0,
    decay: float = 1.0,
    seed: int = 0,
    stream: int = 0,
    chunk: int = 100_000,
) -> np.ndarray:
    """``n x dim`` float32 unit vectors from a mixture of ``clusters`` Gaussian clusters.

    ``x = normalize(c_j + spread * R (s * g))`` with ``c_j`` uniform on the sphere (the
    same centres for every ``stream`` of one ``seed``), ``g ~ N(0, I)``, ``s_i proportional to
    (i+1)^(-decay/2)`` scaled so that ``E|s * g|^2 = 1`` and ``R`` a random rotation shared by
    all clusters. ``decay=0`` gives isotropic noise (intrinsic dimension = ``dim``, the
    hardest case for any graph index); ``decay=1`` gives a power-law spectrum like that of
    real image embeddings. ``stream`` selects independent draws from the same mixture
    (0: the indexed vectors, 1: the queries).
    """
    if n < 0 or dim < 1 or clusters < 1:
        raise ValueError("n >= 0, dim >= 1 and clusters >= 1 are required")
    base_rng = np.random.default_rng(seed)
    centres = _normalize(base_rng.standard_normal((clusters, dim), dtype=np.float32))
    rot, _ = np.linalg.qr(base_rng.standard_normal((dim, dim)))
    scales = (np.arange(1, dim + 1, dtype=np.float64) ** (-decay / 2.0))
    scales /= np.sqrt((scales**2).sum())
    mix = (rot * scales[None, :]).T.astype(np.float32)  # g @ mix = R(s*g) as a row vector
    rng = np.random.default_rng([seed, 1 + stream])
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        lab = rng.integers(0, clusters, stop - start)
        noise = rng.standard_normal((stop - start, dim), dtype=np.float32) @ mix
        out[start:stop] = _normalize(centres[lab] + np.float32(spread) * noise)
    return out


def exact_topk(
    base: np.ndarray, queries: np.ndarray, k: int, *, chunk: int = 32768
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` by inner product (cosine for unit vectors): ``(ids[Q,k] int64, scores[Q,k])``, best first.

    Brute force over gallery chunks (``queries @ chunk.T``, ``argpartition`` for the chunk's
    top k, merged with the running best), so memory is ``O(Q * chunk)``.
    """
    n = base.shape[0]
    q = queries.shape[0]
    k = min(k, n)
    best_s = np.full((q, 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((q, 0), dtype=np.int64)
    for start in range(0, n, chunk):
        s = queries @ base[start : start + chunk].T
        kk = min(k, s.shape[1])
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk] if kk < s.shape[1] else np.broadcast_to(np.arange(s.shape[1]), (q, s.shape[1]))
        cand_s = np.concatenate([best_s, np.take_along_axis(s, part, axis=1)], axis=1)
        cand_i = np.concatenate([best_i, part + start], axis=1)
        sel = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s = np.take_along_axis(cand_s, sel, axis=1)
        best_i = np.take_along_axis(cand_i, sel, axis=1)
    return best_i, best_s


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean over queries of ``|found[q,:k] intersect truth[q,:k]| / k`` (ids; negatives ignored)."""
    found = np.asarray(found)[:, :k].astype(np.int64)
    truth = np.asarray(truth)[:, :k].astype(np.int64)
    hits = (found[:, :, None] == truth[:, None, :]) & (found[:, :, None] >= 0)
    return float(hits.any(axis=2).sum(axis=1).mean() / k)


def _timed_qps(fn: Any, n_queries: int, min_time: float, max_repeats: int = 50) -> dict[str, Any]:
    """Run ``fn()`` (answers ``n_queries``) repeatedly until ``min_time`` s have passed.

    Returns ``{"qps": best, "qps_median": median, "repeats": r}``; ``qps`` uses the fastest
    run (like ``timeit``), which is the least disturbed by other work on a shared machine.
    """
    times: list[float] = []
    t_total = 0.0
    while (t_total < min_time or not times) and len(times) < max_repeats:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        times.append(dt)
        t_total += dt
    return {"qps": n_queries / min(times), "qps_median": n_queries / float(np.median(times)), "repeats": len(times)}


def _search_keys(index: Any, queries: np.ndarray, k: int, threads: int, exact: bool = False) -> np.ndarray:
    m = index.search(queries, k, threads=threads, exact=exact)
    keys = np.asarray(m.keys).astype(np.int64)
    counts = np.asarray(m.counts)
    if (counts < k).any():  # sentinel positions
        mask = np.arange(keys.shape[1])[None, :] >= counts[:, None]
        keys[mask] = -1
    return keys


def _build_index(base: np.ndarray, dtype: str, connectivity: int, expansion_add: int, threads: int, progress: bool) -> tuple[Any, float]:
    from tki_sdk.runtime.native import usearch_index

    index = usearch_index().Index(ndim=base.shape[1], metric="cos", dtype=dtype, connectivity=connectivity, expansion_add=expansion_add)
    n = base.shape[0]
    keys = np.arange(n, dtype=np.uint64)
    step = max(10_000, n // 20)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=f"build {dtype} M={connectivity}", unit="vec", leave=False)
    t0 = time.perf_counter()
    for start in range(0, n, step):
        stop = min(n, start + step)
        index.add(keys[start:stop], base[start:stop], threads=threads)
        if bar is not None:
            bar.update(stop - start)
    dt = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    return index, dt


def run_search_benchmark(
    base: np.ndarray,
    queries: np.ndarray,
    *,
    k: int = 10,
    dtypes: Sequence[str] = ("f32", "f16", "i8"),
    connectivity: Sequence[int] = (16,),
    expansion_add: int = 128,
    expansion_search: Sequence[int] = (16, 32, 64, 128, 256),
    threads: int | None = None,
    exact_usearch_queries: int = 200,
    min_time: float = 0.3,
    progress: bool = True,
    label: str | None = None,
) -> dict[str, Any]:
    """All measurements for one gallery ``base [n,d]`` and ``queries [Q,d]`` (unit vectors, float32).

    Returns ``{"n", "dim", "n_queries", "k", "threads", "exact": {...}, "sweep": [...],
    "builds": [...], "best": {dtype: {...}}}``; see the module docstring for each figure.
    """
    base = np.ascontiguousarray(base, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    threads = threads or _usable_cpus()
    n, dim = base.shape
    nq = queries.shape[0]
    if n < k:
        raise ValueError(f"gallery of {n} vectors is smaller than k={k}")

    # Exact: numpy brute force (ground truth) and usearch exact=True.
    with _blas_threads(threads):
        exact_topk(base[: min(n, 4096)], queries[: min(nq, 64)], k)  # warm BLAS
        t0 = time.perf_counter()
        truth, _ = exact_topk(base, queries, k)
        t_np = time.perf_counter() - t0
        timing = _timed_qps(lambda: exact_topk(base, queries, k), nq, min_time - t_np, 5) if t_np < min_time else None
    numpy_qps = max(nq / t_np, timing["qps"] if timing else 0.0)

    sweep: list[dict[str, Any]] = []
    builds: list[dict[str, Any]] = []
    exact_info: dict[str, Any] = {"numpy_qps": numpy_qps, "numpy_seconds_first_run": t_np}
    for dtype in dtypes:
        for m in connectivity:
            index, t_build = _build_index(base, dtype, int(m), expansion_add, threads, progress)
            build = {
                "dtype": dtype, "connectivity": int(m), "expansion_add": expansion_add,
                "build_seconds": t_build, "build_rate": n / t_build,
                "memory_bytes": int(index.memory_usage), "serialized_bytes": int(index.serialized_length),
                "vector_bytes": int(n * dim * {"f32": 4, "f16": 2, "i8": 1, "f64": 8}.get(dtype, 4)),
            }
            builds.append(build)
            if dtype == dtypes[0] and "usearch_qps" not in exact_info:
                sub = queries[: min(nq, exact_usearch_queries)]
                keys = _search_keys(index, sub, k, threads, exact=True)
                timing = _timed_qps(lambda: index.search(sub, k, threads=threads, exact=True), len(sub), min_time, 5)
                exact_info.update({
                    "usearch_qps": timing["qps"], "usearch_qps_median": timing["qps_median"], "usearch_dtype": dtype, "usearch_queries": len(sub),
                    "usearch_recall": recall_at_k(keys, truth[: len(sub)], k),
                })
            for ef in expansion_search:
                index.expansion_search = int(ef)
                keys = _search_keys(index, queries, k, threads)
                rec = recall_at_k(keys, truth, k)
                timing = _timed_qps(lambda: index.search(queries, k, threads=threads), nq, min_time)
                sweep.append({"n": n, "dtype": dtype, "connectivity": int(m), "expansion_search": int(ef),
                              "k": k, "recall": rec, **timing})
            del index
    exact_best = max(numpy_qps, exact_info.get("usearch_qps", 0.0))
    exact_info["best_qps"] = exact_best
    exact_info["best_method"] = "numpy" if exact_best == numpy_qps else "usearch"
    rkey = "recall"
    for r in sweep:
        r["speedup_vs_exact"] = r["qps"] / exact_best
        r["speedup_vs_numpy"] = r["qps"] / numpy_qps
        if "usearch_qps" in exact_info:
            r["speedup_vs_usearch_exact"] = r["qps"] / exact_info["usearch_qps"]
    best: dict[str, Any] = {}
    for dtype in dtypes:
        ok = [r for r in sweep if r["dtype"] == dtype and r[rkey] >= TARGET_RECALL]
        top = max(ok, key=lambda r: r["qps"]) if ok else None
        best[dtype] = None if top is None else {
            "connectivity": top["connectivity"], "expansion_search": top["expansion_search"],
            "recall": top[rkey], "qps": top["qps"], "speedup_vs_exact": top["speedup_vs_exact"],
            "meets_target": top["speedup_vs_exact"] >= TARGET_SPEEDUP,
        }
    return {"label": label or f"n={n}", "n": n, "dim": dim, "n_queries": nq, "k": k, "threads": threads,
            "expansion_add": expansion_add, "exact": exact_info, "builds": builds, "sweep": sweep, "best": best}


# -- command line -----------------------------------------------------------------------------

def _int_list(s: str) -> list[int]:
    try:
        vals = [int(float(v)) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {s!r}")
    return vals


def _dtype_list(s: str) -> list[str]:
    vals = [v.strip() for v in s.split(",") if v.strip()]
    bad = [v for v in vals if v not in ("f32", "f16", "i8", "f64")]
    if not vals or bad:
        raise argparse.ArgumentTypeError(f"dtypes must be from f32,f16,i8,f64; got {s!r}")
    return vals


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``tki-bench search``."""
    g = parser.add_argument_group("search")
    g.add_argument("--sizes", type=_int_list, default=None,
                   help="gallery sizes (default 10000,100000,1000000; --quick: 10000,50000); 1e5 accepted")
    g.add_argument("--dim", type=int, default=None, help="vector dimension (default 512)")
    g.add_argument("--clusters", type=int, default=1000, help="Gaussian clusters on the sphere (default 1000)")
    g.add_argument("--spread", type=float, default=1.0, help="cluster noise norm relative to the unit centres (default 1.0)")
    g.add_argument("--decay", type=float, default=1.0,
                   help="noise spectrum power-law exponent: 0 isotropic (hardest), 1 embedding-like (default)")
    g.add_argument("--queries", type=int, default=None, help="held-out queries (default 1000; --quick: 500)")
    g.add_argument("--k", type=int, default=10, help="neighbours per query for recall@k (default 10)")
    g.add_argument("--dtypes", type=_dtype_list, default=["f32", "f16", "i8"], help="index scalar types (default f32,f16,i8)")
    g.add_argument("--connectivity", type=_int_list, default=None, help="HNSW M values (default 16,32; --quick: 16)")
    g.add_argument("--expansion-add", type=int, default=128, help="HNSW efConstruction (default 128)")
    g.add_argument("--expansion-search", type=_int_list, default=None,
                   help="HNSW ef values swept (default 16,32,64,128,256,512; --quick: 16..256)")
    g.add_argument("--threads", type=int, default=None, help="search/build threads and BLAS threads (default: usable CPUs)")
    g.add_argument("--exact-usearch-queries", type=int, default=200, help="queries timed with usearch exact=True (default 200)")
    g.add_argument("--min-time", type=float, default=0.3, help="seconds of repeated searches per QPS figure (default 0.3)")
    g.add_argument("--vectors", type=Path, default=None,
                   help="real embeddings (.npy, [N,D]); the last --queries rows become the queries; --sizes ignored")
    g.add_argument("--query-vectors", type=Path, default=None, help="queries for --vectors (.npy) instead of held-out rows")
    g.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    g.add_argument("--name", default=None, help="result file stem (default: quick, or n<largest>_d<dim>)")


def _load_npy(path: Path, what: str) -> np.ndarray:
    from tki_sdk.common.cli import UsageError

    if not path.is_file():
        raise UsageError(f"{what} file {path} not found; pass a .npy array of shape [N, D]")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is a user error here
        raise UsageError(f"cannot read {path} as .npy ({e}); save it with numpy.save") from None
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
        raise UsageError(f"{path} holds shape {arr.shape} dtype {arr.dtype}; expected a numeric [N, D] array")
    if not np.isfinite(arr).all():
        raise UsageError(f"{path} contains NaN or inf")
    return _normalize(arr)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """``tki-bench search``: see the module docstring. Writes the recall-vs-QPS PNG under ``args.suite_dir``."""
    from tki_sdk.common.cli import UsageError
    from .plots import plot_recall_qps

    defaults = QUICK_DEFAULTS if getattr(args, "quick", False) else FULL_DEFAULTS
    sizes = args.sizes or defaults["sizes"]
    dim = args.dim or defaults["dim"]
    nq = args.queries or defaults["queries"]
    conn = args.connectivity or defaults["connectivity"]
    efs = args.expansion_search or defaults["expansion_search"]
    threads = args.threads or _usable_cpus()
    progress = not getattr(args, "no_progress", False)
    if dim < 1 or nq < 1 or args.k < 1 or args.clusters < 1 or threads < 1:
        raise UsageError("--dim, --queries, --k, --clusters and --threads must be positive")

    runs: list[dict[str, Any]] = []
    common = dict(k=args.k, dtypes=args.dtypes, connectivity=conn, expansion_add=args.expansion_add,
                  expansion_search=efs, threads=threads, exact_usearch_queries=args.exact_usearch_queries,
                  min_time=args.min_time, progress=progress)
    data_desc: dict[str, Any]
    if args.vectors is not None:
        vecs = _load_npy(args.vectors, "--vectors")
        if args.query_vectors is not None:
            qv = _load_npy(args.query_vectors, "--query-vectors")
            if qv.shape[1] != vecs.shape[1]:
                raise UsageError(f"--query-vectors has dimension {qv.shape[1]}, --vectors {vecs.shape[1]}")
            base = vecs
        else:
            if vecs.shape[0] <= nq + args.k:
                raise UsageError(f"{args.vectors} has {vecs.shape[0]} rows; need more than --queries {nq} + k")
            base, qv = vecs[:-nq], vecs[-nq:]
        data_desc = {"source": "file", "vectors": str(args.vectors), "query_vectors": str(args.query_vectors) if args.query_vectors else "last rows held out"}
        runs.append(run_search_benchmark(base, qv, label=f"{args.vectors.name} n={base.shape[0]}", **common))
        name = args.name or f"real_{args.vectors.stem}"
    else:
        data_desc = {"source": "synthetic", "generator": "clustered_unit_vectors", "clusters": args.clusters,
                     "spread": args.spread, "decay": args.decay, "seed": args.seed, "dim": dim}
        queries = clustered_unit_vectors(nq, dim, clusters=args.clusters, spread=args.spread, decay=args.decay,
                                         seed=args.seed, stream=1)
        for n in sizes:
            base = clustered_unit_vectors(n, dim, clusters=args.clusters, spread=args.spread, decay=args.decay,
                                          seed=args.seed, stream=0)
            if progress:
                print(f"search: n={n:,} d={dim} queries={nq} threads={threads}", flush=True)
            runs.append(run_search_benchmark(base, queries, label=f"n={n}", **common))
            del base
        name = args.name or ("quick" if getattr(args, "quick", False) else f"n{max(sizes)}_d{dim}")

    largest = max(runs, key=lambda r: r["n"])
    met = [d for d, b in largest["best"].items() if b and b["meets_target"]]
    target = {
        "recall_at_10": TARGET_RECALL, "speedup": TARGET_SPEEDUP, "n": TARGET_N,
        "largest_n_run": largest["n"], "met_at_largest": bool(met), "dtypes_meeting": met,
        "note": ("evaluated at the target size" if largest["n"] >= TARGET_N else
                 f"the target is defined at {TARGET_N:,} vectors; the largest size run here is {largest['n']:,}, "
                 "so this verdict is for that size only (exact search slows linearly with n, HNSW roughly "
                 "logarithmically, so the speed-up grows with n)"),
    }
    suite_dir = Path(args.suite_dir)
    records = [r for run_ in runs for r in run_["sweep"]]
    exact_qps = {run_["n"]: run_["exact"]["best_qps"] for run_ in runs}
    png = plot_recall_qps(records, suite_dir / f"{name}.png", exact_qps=exact_qps, k=args.k,
                          title=f"usearch HNSW, {data_desc['source']} d={runs[0]['dim']}, {threads} threads")
    md = render_markdown(runs, target)
    return {"name": name, "data": data_desc, "runs": runs, "target": target, "plots": [str(png)], "markdown": md}


def render_markdown(runs: Sequence[dict[str, Any]], target: dict[str, Any] | None = None) -> str:
    """Markdown: the exact baselines, builds, the full sweep and the best configuration per dtype."""
    out = []
    rows = [[f"{r['n']:,}", r["dim"], r["threads"], r["exact"]["numpy_qps"], r["exact"].get("usearch_qps"),
             r["exact"].get("usearch_recall")] for r in runs]
    out.append("Exact search (queries/s):\n\n" + markdown_table(
        ["n", "dim", "threads", "numpy QPS", "usearch exact QPS", "usearch exact recall@10"], rows))
    rows = [[f"{r['n']:,}", b["dtype"], b["connectivity"], b["build_rate"], b["build_seconds"],
             b["memory_bytes"] / 2**20, b["serialized_bytes"] / 2**20] for r in runs for b in r["builds"]]
    out.append("Index builds:\n\n" + markdown_table(
        ["n", "dtype", "M", "build vec/s", "build s", "memory MiB", "serialized MiB"], rows))
    rows = [[f"{s['n']:,}", s["dtype"], s["connectivity"], s["expansion_search"], f"{s['recall']:.4f}",
             s["qps"], s["speedup_vs_exact"]] for r in runs for s in r["sweep"]]
    out.append("HNSW sweep:\n\n" + markdown_table(
        ["n", "dtype", "M", "ef", f"recall@{runs[0]['k']}", "QPS", "x exact"], rows))
    rows = []
    for r in runs:
        for d, b in r["best"].items():
            rows.append([f"{r['n']:,}", d] + (["-", "-", "-", "-", "-", "no (recall < 0.99 everywhere)"] if b is None else
                        [b["connectivity"], b["expansion_search"], f"{b['recall']:.4f}", b["qps"], b["speedup_vs_exact"],
                         "yes" if b["meets_target"] else "no"]))
    out.append("Fastest configuration with recall@10 >= 0.99:\n\n" + markdown_table(
        ["n", "dtype", "M", "ef", "recall@10", "QPS", "x exact", ">= 50x"], rows,
        align=["r", "l", "r", "r", "r", "r", "r", "l"]))
    if target:
        out.append(f"Target (recall@10 >= {target['recall_at_10']} at >= {target['speedup']:g}x exact QPS, "
                   f"{target['n']:,} x 512): {'MET' if target['met_at_largest'] else 'NOT MET'} at n={target['largest_n_run']:,}"
                   f" ({target['note']}).")
    return "\n\n".join(out)
