"""Search suite: the Gallery side by side with FAISS and exact search, on one machine, in one run.

For each data set (``embedding``: vectors shaped like image embeddings, ``clustered``: Gaussian clusters on
the sphere, both from :mod:`.search_data`; or ``--vectors file.npy``) and size ``n``:

* **Ground truth and the exact baseline**: exact top-``k`` by cosine with numpy BLAS (``Q x chunk`` matmuls +
  ``argpartition``, merged; BLAS limited to ``--threads``); its QPS is the exact baseline. usearch's own
  exact search is timed on a query subset for reference.
* **Gallery** (HNSW through :class:`tki_sdk.runtime.index.gallery.Gallery`, its public ``search``) for each
  ``--dtypes`` (usearch f32, f16, i8 with its float16 re-ranking; ``hnswlib`` and ``faiss``: those backends,
  f32) and
  ``--connectivity``: built with
  :func:`tki_sdk.runtime.index.build.add_tuned` (multi-threaded add, self-tuning on held-out vectors for
  ``--target-recall``), then swept over ``expansion_search``; the tuned choice is also scored on the real
  queries (its estimate against what the queries see).
* **FAISS** (:mod:`.search_faiss`): ``IndexHNSWFlat`` M 32, ``IVF{nlist},Flat`` and ``IVF{nlist},PQ{m}x8``
  sized as autofaiss would, swept over ``efSearch`` / ``nprobe``.
* For each index: recall@k against the ground truth and batch QPS (all queries in one call, ``--threads``
  threads, the fastest of at least three runs and of those over ``--min-time``), build time (vectors/s; a Gallery's
  includes its metadata and excludes its self-tuning at build, whose exact reference and sweep are
  ``tuning_seconds``), memory (the bytes of
  the search structures, counted alike for both libraries: their serialised size, plus the Gallery's used
  re-ranking rows) and file size.
  The Pareto frontier of each curve gives the QPS at recall ``TARGET_RECALL`` (log-QPS interpolated between
  the two frontier points that bracket it; ``None`` when the curve never reaches it).
* **Filters** (:mod:`.search_filters`): ``where`` filters matching 1%, 10%, 50% on the first Gallery, recall@k
  against exact filtered search, and QPS.

Goals (ARCHITECTURE.md, "Targets", the search row; 1M x 512, embedding-shaped data): recall@10 >= 0.99 at
QPS >= FAISS HNSW's at that recall and >= 30x exact; build rate >= FAISS HNSW's and memory <= FAISS HNSW's
float32 (same run); i8 + re-ranking >= 0.99 in <= 40% of the f32 gallery's memory; filtered search at 1%, 10% and 50% >= 0.99
recall. Each goal is reported with the measured figure and, when missed, by how much.

``recall@k = |approx top-k  intersect  exact top-k| / k``, averaged over queries.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tki_sdk.benchmarks.options import SuiteOptions
from tki_sdk.benchmarks.results import markdown_table, to_jsonable
from tki_sdk.benchmarks.search_data import (
    clustered_unit_vectors,
    embedding_shaped_vectors,
    load_spectrum,
    normalize,
)
from tki_sdk.common.cpu import usable_cpus
from tki_sdk.common.errors import UsageError
from tki_sdk.common.index_config import IndexConfig

__all__ = [
    "clustered_unit_vectors",
    "embedding_shaped_vectors",
    "exact_topk",
    "pareto_frontier",
    "qps_at_recall",
    "recall_at_k",
    "run_comparison",
    
    "run",
    "TARGET_RECALL",
    "TARGET_SPEEDUP",
    "TARGET_N",
]

TARGET_RECALL = 0.99
TARGET_SPEEDUP = 30.0
TARGET_FAISS_RATIO = 1.0
#: Build rate and memory of each Gallery against FAISS HNSW's in the same run (>= and <= these ratios).
TARGET_BUILD_VS_FAISS = 1.0
TARGET_MEMORY_VS_FAISS = 1.0
TARGET_I8_MEMORY = 0.40
TARGET_N = 1_000_000

EF_SWEEP = [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512]
FULL_DEFAULTS = {"sizes": [1_000_000], "dim": 512, "queries": 1000, "connectivity": [None],
                 "expansion_search": EF_SWEEP, "data": ["embedding"]}
QUICK_DEFAULTS = {"sizes": [20_000], "dim": 256, "queries": 300, "connectivity": [None],
                  "expansion_search": [16, 32, 64, 128, 256], "data": ["embedding"]}
INDEXES = ("gallery", "faiss-hnsw", "faiss-ivf", "faiss-ivfpq")


#: Status lines of a long run (shown by the console scripts like progress; library code never prints).
_status = logging.getLogger("tki_sdk.progress.bench_search")


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


def _timed_qps(fn: Any, n_queries: int, min_time: float, max_repeats: int = 50,
               min_repeats: int = 1) -> dict[str, Any]:
    """Run ``fn()`` (answers ``n_queries``) repeatedly until ``min_time`` s have passed and at least
    ``min_repeats`` runs were made.

    Returns ``{"qps": best, "qps_median": median, "repeats": r}``; ``qps`` uses the fastest
    run (like ``timeit``), which is the least disturbed by other work on a shared machine.
    """
    times: list[float] = []
    t_total = 0.0
    while (t_total < min_time or len(times) < max(1, min_repeats)) and len(times) < max_repeats:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        times.append(dt)
        t_total += dt
    return {"qps": n_queries / min(times), "qps_median": n_queries / float(np.median(times)), "repeats": len(times)}


#: Timed runs of every point of a recall / QPS curve, at least: the fastest of three, so that one run slowed
#: by other work on a shared machine does not bend the curve.
MIN_REPEATS = 3


def _measure(fn: Callable[[], np.ndarray], truth: np.ndarray, k: int, min_time: float) -> dict[str, Any]:
    """Recall@k of ``fn()``'s ids against ``truth`` and its QPS (see :func:`_timed_qps`; at least
    :data:`MIN_REPEATS` timed runs after the first, untimed one)."""
    ids = fn()
    return {"recall": recall_at_k(ids, truth, k), **_timed_qps(fn, truth.shape[0], min_time, min_repeats=MIN_REPEATS)}


# -- Pareto frontier ---------------------------------------------------------------------------

def pareto_frontier(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """``(recall, qps)`` points not beaten on both axes by another, by increasing recall."""
    pts = sorted(set((float(r), float(q)) for r, q in points), key=lambda p: (-p[0], -p[1]))
    front: list[tuple[float, float]] = []
    best_q = -math.inf
    for r, q in pts:  # from the highest recall down: keep a point when it is faster than all above it
        if q > best_q:
            front.append((r, q))
            best_q = q
    return front[::-1]


def qps_at_recall(points: Sequence[tuple[float, float]], target: float) -> float | None:
    """QPS of the frontier at ``target`` recall: log-QPS interpolated linearly in recall between the two
    frontier points bracketing it; the fastest frontier point when every point is above it; ``None`` when
    no point reaches it."""
    front = pareto_frontier(points)
    above = [p for p in front if p[0] >= target]
    if not above:
        return None
    hi = max(above, key=lambda p: p[1])
    below = [p for p in front if p[0] < target]
    if not below:
        return hi[1]
    lo = max(below, key=lambda p: p[0])
    if hi[0] == lo[0]:
        return hi[1]
    t = (target - lo[0]) / (hi[0] - lo[0])
    return float(math.exp(math.log(lo[1]) + t * (math.log(hi[1]) - math.log(lo[1]))))


# -- the Gallery side --------------------------------------------------------------------------

def _folder_bytes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in folder.rglob("*") if p.is_file()}


#: ``--dtypes`` entries: usearch storages, and the hnswlib and FAISS backends (float32).
GALLERY_VARIANTS = {"f32": ("usearch", "f32"), "f16": ("usearch", "f16"), "i8": ("usearch", "i8"),
                    "hnswlib": ("hnswlib", "f32"), "faiss": ("faiss", "f32")}


def _gallery_memory(g: Any) -> int:
    """Bytes the gallery's search structures hold, counted as FAISS's are (its serialised size): the graph's
    serialised size (usearch ``serialized_length``, hnswlib ``index_file_size``: vectors + graph) plus the
    used rows of the float16 re-ranking copy (``2 * ndim + 8`` bytes each); metadata excluded. usearch's own
    ``memory_usage`` counts its allocator's reserved arenas (e.g. 3,369 vs 2,197 bytes per f32 512-d item at
    20k) and is kept as ``allocated_bytes``."""
    graph = g._index
    mem = int(graph.serialized_bytes() if hasattr(graph, "serialized_bytes") else graph.memory_bytes())
    if g.rescore:
        mem += int(g._n * (g._flat_vecs.dtype.itemsize * g.ndim + g._flat_keys.dtype.itemsize))
    return mem


def _gallery_allocated(g: Any) -> int:
    """usearch's ``memory_usage`` (reserved arenas) plus the allocated re-ranking copy."""
    mem = int(g._index.memory_bytes())
    if g.rescore:
        mem += int(g._flat_vecs.nbytes + g._flat_keys.nbytes)
    return mem


def gallery_curve(base: np.ndarray, queries: np.ndarray, truth: np.ndarray, *, dtype: str, connectivity: int | None,
                  expansion_add: int, efs: Sequence[int], threads: int, k: int, min_time: float,
                  target_recall: float, metadata: list[dict[str, Any]] | None, progress: bool,
                  keep: bool = False) -> tuple[dict[str, Any], Any]:
    """Build one Gallery (self-tuned at build), sweep ``expansion_search``; returns ``(record, gallery or None)``.
    ``connectivity=None``: the backend's default M (``IndexConfig.for_backend``)."""
    from tki_sdk.runtime.index.build import add_tuned
    from tki_sdk.runtime.index.gallery import Gallery

    n, dim = base.shape
    backend, dtype = GALLERY_VARIANTS[dtype]
    g = Gallery(dim, metric="cos", dtype=dtype, connectivity=connectivity, expansion_add=expansion_add,
                threads=threads, index=backend)
    t0 = time.perf_counter()
    tuned = add_tuned(g, np.arange(n, dtype=np.uint64), base, metadata, target_recall=target_recall, k=k,
                      progress=f"gallery {backend} {dtype} M={g.connectivity}" if progress else False)
    t_total = time.perf_counter() - t0
    t_build = t_total - (tuned.seconds if tuned else 0.0)
    name = ("Gallery " + ("" if backend == "usearch" else f"{backend} ") + dtype
            + (" + f16 re-rank" if g.rescore else "") + f" M={g.connectivity}")
    sweep = []
    for ef in efs:
        g.expansion_search = int(ef)
        res = _measure(lambda: _gallery_ids(g, queries, k), truth, k, min_time)
        sweep.append({"param": "expansion_search", "value": int(ef), **res})
    tuned_rec = None
    if tuned is not None:
        g.expansion_search = tuned.expansion_search
        at = _measure(lambda: _gallery_ids(g, queries, k), truth, k, min_time)
        tuned_rec = {**tuned.record(), "recall_on_queries": at["recall"], "qps_on_queries": at["qps"]}
    parallel = parallel_searches(g, queries, k)
    with tempfile.TemporaryDirectory(prefix="tki-search-") as d:
        g.save(Path(d) / "g")
        files = _folder_bytes(Path(d) / "g")
    rec = {
        "index": name, "kind": "gallery", "backend": backend, "dtype": dtype, "connectivity": g.connectivity,
        "expansion_add": expansion_add, "rescore": g.rescore, "rescore_oversample": g.rescore_oversample,
        "build_seconds": t_build, "build_rate": n / t_build, "tuning_seconds": tuned.seconds if tuned else 0.0,
        "memory_bytes": _gallery_memory(g), "allocated_bytes": _gallery_allocated(g), "file_bytes": sum(v for f, v in files.items() if f != "meta.sqlite"),
        "metadata_file_bytes": files.get("meta.sqlite", 0), "files": files, "sweep": sweep, "tuned": tuned_rec,
        "parallel_searches": parallel,
    }
    if not keep:
        del g
        return rec, None
    return rec, g


def parallel_searches(g: Any, queries: np.ndarray, k: int, threads: int = 8, n: int = 400) -> dict[str, Any]:
    """One query per ``Gallery.search`` call (as ``tki serve`` makes them), the first ``n`` queries: all from
    one thread, then split over ``threads`` threads started together. ``speedup = serial_s / concurrent_s``:
    about 1 where searches wait for each other, up to the usable cores where they run in parallel."""
    import threading

    qs = queries[:n]
    t0 = time.perf_counter()
    for q in qs:
        g.search(q, k)
    serial = time.perf_counter() - t0
    parts = np.array_split(np.arange(len(qs)), threads)
    start = threading.Barrier(threads + 1)

    def work(rows: np.ndarray) -> None:
        start.wait()
        for r in rows:
            g.search(qs[r], k)

    ts = [threading.Thread(target=work, args=(rows,)) for rows in parts]
    for t in ts:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    concurrent = time.perf_counter() - t0
    return {"queries": int(len(qs)), "threads": threads, "serial_seconds": serial, "concurrent_seconds": concurrent,
            "speedup": serial / concurrent if concurrent > 0 else float("nan"), "usable_cpus": usable_cpus(),
            "parallel_by_design": bool(g._index.parallel_search)}


def _gallery_ids(g: Any, queries: np.ndarray, k: int) -> np.ndarray:
    keys, _ = g.search(queries, k)
    ids = keys.astype(np.int64)
    ids[keys == np.iinfo(np.uint64).max] = -1
    return ids


# -- one comparison ----------------------------------------------------------------------------

def run_comparison(
    base: np.ndarray,
    queries: np.ndarray,
    *,
    k: int = 10,
    dtypes: Sequence[str] = ("f32", "f16", "i8", "hnswlib"),
    connectivity: Sequence[int | None] = (None,),
    expansion_add: int = IndexConfig.expansion_add,
    expansion_search: Sequence[int] = tuple(EF_SWEEP),
    indexes: Sequence[str] = INDEXES,
    faiss_max_nlist: int = 4096,
    faiss_ef_construction: int | None = None,
    filter_fractions: Sequence[float] = (0.01, 0.1, 0.5),
    filter_queries: int = 300,
    target_recall: float = TARGET_RECALL,
    threads: int | None = None,
    exact_usearch_queries: int = 200,
    min_time: float = 0.3,
    progress: bool = True,
    label: str | None = None,
    seed: int = 0,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Every index on ``base [n, d]`` with ``queries [Q, d]`` (unit vectors); see the module docstring.

    Returns ``{"label", "n", "dim", "n_queries", "k", "threads", "exact", "indexes": [...], "filters": [...],
    "at_target": [...]}``; each index record has its build figures and ``sweep`` rows
    ``{param, value, recall, qps, ...}``. ``checkpoint(partial)`` (optional) receives what is measured so far
    after each index, so a long run leaves its figures behind."""
    from tki_sdk.benchmarks.search_faiss import (
        build_faiss,
        faiss_available,
        faiss_specs,
    )

    base = np.ascontiguousarray(base, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    threads = threads or usable_cpus()
    n, dim = base.shape
    nq = queries.shape[0]
    if n < k:
        raise ValueError(f"gallery of {n} vectors is smaller than k={k}")
    log = print if progress else (lambda *a, **kw: None)

    with _blas_threads(threads):
        exact_topk(base[: min(n, 4096)], queries[: min(nq, 64)], k)  # warm BLAS
        t0 = time.perf_counter()
        truth, _ = exact_topk(base, queries, k)
        t_np = time.perf_counter() - t0
        timing = _timed_qps(lambda: exact_topk(base, queries, k), nq, min_time - t_np, 5) if t_np < min_time else None
    numpy_qps = max(nq / t_np, timing["qps"] if timing else 0.0)
    exact_info: dict[str, Any] = {"numpy_qps": numpy_qps, "numpy_seconds_first_run": t_np,
                                  "memory_bytes": int(base.nbytes)}
    log(f"  exact (numpy BLAS, {threads} threads): {numpy_qps:,.1f} QPS", flush=True)
    try:
        from tki_sdk.runtime.native import usearch_index

        sub = queries[: min(nq, exact_usearch_queries)]
        ex = usearch_index().search
        m = ex(base, sub, k, "cos", exact=True, threads=threads)
        ids = np.asarray(m.keys).astype(np.int64)
        t = _timed_qps(lambda: ex(base, sub, k, "cos", exact=True, threads=threads), len(sub), min_time, 5)
        exact_info.update({"usearch_qps": t["qps"], "usearch_queries": len(sub),
                           "usearch_recall": recall_at_k(ids, truth[: len(sub)], k)})
    except ImportError:  # pragma: no cover - usearch is part of the runtime extra
        pass

    records: list[dict[str, Any]] = []
    filters: list[dict[str, Any]] = []
    slices = None
    if "gallery" in indexes:
        from tki_sdk.benchmarks.search_filters import (
            filter_metadata,
            item_slices,
            measure_filters,
        )

        fractions = [f for f in filter_fractions if f > 0]
        if fractions:
            slices = item_slices(n, seed)
        for i, dtype in enumerate(dtypes):
            for mm in connectivity:
                first = i == 0 and mm == connectivity[0]
                meta = filter_metadata(slices) if (slices is not None and first) else None
                rec, g = gallery_curve(base, queries, truth, dtype=dtype,
                                       connectivity=None if mm is None else int(mm),
                                       expansion_add=expansion_add, efs=expansion_search, threads=threads, k=k,
                                       min_time=min_time, target_recall=target_recall, metadata=meta,
                                       progress=progress, keep=meta is not None)
                records.append(rec)
                if checkpoint:
                    checkpoint({"label": label, "n": n, "exact": exact_info, "indexes": records})
                log(f"  {rec['index']}: build {rec['build_rate']:,.0f} vec/s, tuned ef "
                    f"{(rec['tuned'] or {}).get('expansion_search')}", flush=True)
                if g is not None:
                    fq = queries[: min(nq, filter_queries)]
                    with _blas_threads(threads):
                        filters = measure_filters(
                            g, base, fq, slices, fractions, k,
                            lambda fn, tr: _measure(fn, tr, k, min_time), exact_topk)
                    for f in filters:
                        f["index"] = rec["index"]
                    log("  filters: " + ", ".join(f"{f['fraction']:.0%} recall {f['recall']:.4f} "
                                                  f"{f['qps']:,.0f} QPS" for f in filters), flush=True)
                    del g
    wanted_faiss = [i for i in indexes if i.startswith("faiss-")]
    faiss_note = None
    if wanted_faiss and not faiss_available():
        faiss_note = "faiss-cpu is not installed (pip install 'tki-sdk[bench]'); FAISS indexes skipped"
        log("  " + faiss_note)
    elif wanted_faiss:
        specs = {s["kind"]: s for s in faiss_specs(n, dim, max_nlist=faiss_max_nlist)}
        for key in wanted_faiss:
            if key not in specs:
                log(f"  {key}: skipped, {n:,} vectors are too few to train it")
                continue
            spec = specs[key]
            if spec["param"] == "efSearch":
                spec = {**spec, "values": list(expansion_search)}
            b = build_faiss(spec, base, threads=threads, seed=seed,
                            expansion_add=faiss_ef_construction or expansion_add)
            sweep = []
            for v in spec["values"]:
                b.set_param(v)
                sweep.append({"param": b.param, "value": int(v),
                              **_measure(lambda: b.search(queries, k), truth, k, min_time)})
            records.append({"index": b.name, "kind": key, "key": b.key, "build_seconds": b.build_seconds,
                            "train_seconds": b.train_seconds, "build_rate": n / b.build_seconds,
                            "memory_bytes": b.memory_bytes, "file_bytes": b.file_bytes, "notes": b.notes,
                            "sweep": sweep})
            log(f"  {b.name}: build {n / b.build_seconds:,.0f} vec/s", flush=True)
            if checkpoint:
                checkpoint({"label": label, "n": n, "exact": exact_info, "indexes": records, "filters": filters})
            del b

    for rec in records:
        pts = [(s["recall"], s["qps"]) for s in rec["sweep"]]
        rec["frontier"] = pareto_frontier(pts)
        rec["qps_at_target"] = qps_at_recall(pts, TARGET_RECALL)
        rec["max_recall"] = max(p[0] for p in pts)
        ok = [s for s in rec["sweep"] if s["recall"] >= TARGET_RECALL]
        rec["best_at_target"] = max(ok, key=lambda s: s["qps"]) if ok else None
    faiss_hnsw = next((r for r in records if r.get("kind") == "faiss-hnsw"), None)
    f32 = next((r for r in records if r.get("kind") == "gallery" and r["dtype"] == "f32"
                and r.get("backend", "usearch") == "usearch"), None)
    at_target = []
    for rec in records:
        q = rec["qps_at_target"]
        ref = faiss_hnsw["qps_at_target"] if faiss_hnsw else None
        at_target.append({
            "index": rec["index"], "qps": q, "max_recall": rec["max_recall"],
            "vs_faiss_hnsw": (q / ref) if (q and ref) else None,
            "vs_exact": (q / numpy_qps) if q else None,
            "build_rate": rec["build_rate"], "memory_bytes": rec["memory_bytes"], "file_bytes": rec["file_bytes"],
            "memory_vs_gallery_f32": (rec["memory_bytes"] / f32["memory_bytes"]) if f32 else None,
        })
    return {"label": label or f"n={n}", "n": n, "dim": dim, "n_queries": nq, "k": k, "threads": threads,
            "expansion_add": expansion_add, "exact": exact_info, "indexes": records, "filters": filters,
            "at_target": at_target, "faiss_note": faiss_note}


def evaluate_goals(run_: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's goals for one comparison: measured figure, goal, met, and the shortfall when missed."""
    goals = []
    at = {a["index"]: a for a in run_["at_target"]}
    galleries = [r for r in run_["indexes"] if r.get("kind") == "gallery"]
    faiss_hnsw = next((r for r in run_["indexes"] if r.get("kind") == "faiss-hnsw"), None)
    for g in galleries:
        a = at[g["index"]]
        if a["qps"] is None:
            goals.append({"goal": f"{g['index']}: recall@10 >= {TARGET_RECALL}", "measured": a["max_recall"],
                          "met": False, "shortfall": f"max recall {a['max_recall']:.4f}"})
            continue
        if a["vs_faiss_hnsw"] is not None:
            r = a["vs_faiss_hnsw"]
            goals.append({"goal": f"{g['index']}: QPS at recall {TARGET_RECALL} >= FAISS HNSW", "measured": r,
                          "met": r >= TARGET_FAISS_RATIO, "shortfall": None if r >= 1 else f"{(1 - r):.0%} slower"})
        r = a["vs_exact"]
        goals.append({"goal": f"{g['index']}: QPS at recall {TARGET_RECALL} >= {TARGET_SPEEDUP:g}x exact",
                      "measured": r, "met": r >= TARGET_SPEEDUP,
                      "shortfall": None if r >= TARGET_SPEEDUP else f"{r:.1f}x, {TARGET_SPEEDUP / r:.2f}x short"})
        if faiss_hnsw is not None:
            b = g["build_rate"] / faiss_hnsw["build_rate"]
            goals.append({"goal": f"{g['index']}: build rate >= FAISS HNSW's", "measured": b,
                          "met": b >= TARGET_BUILD_VS_FAISS,
                          "shortfall": None if b >= TARGET_BUILD_VS_FAISS else f"{(1 - b):.0%} slower"})
            m = g["memory_bytes"] / faiss_hnsw["memory_bytes"]
            goals.append({"goal": f"{g['index']}: memory <= FAISS HNSW's", "measured": m,
                          "met": m <= TARGET_MEMORY_VS_FAISS,
                          "shortfall": None if m <= TARGET_MEMORY_VS_FAISS else f"{(m - 1):.0%} more"})
    i8 = next((g for g in galleries if g["dtype"] == "i8"), None)
    f32 = next((g for g in galleries if g["dtype"] == "f32" and g.get("backend", "usearch") == "usearch"), None)
    if i8 and f32:
        frac = i8["memory_bytes"] / f32["memory_bytes"]
        reached = at[i8["index"]]["qps"] is not None
        goals.append({"goal": f"i8 + re-ranking: recall@10 >= {TARGET_RECALL} in <= {TARGET_I8_MEMORY:.0%} of f32 memory",
                      "measured": {"memory_fraction": frac, "max_recall": i8["max_recall"]},
                      "met": reached and frac <= TARGET_I8_MEMORY,
                      "shortfall": None if (reached and frac <= TARGET_I8_MEMORY) else
                      f"{frac:.0%} of f32 memory ({frac / TARGET_I8_MEMORY:.2f}x the goal)"
                      + ("" if reached else f"; max recall {i8['max_recall']:.4f}")})
    for f in run_["filters"]:
        goals.append({"goal": f"filter matching {f['fraction']:.0%}: recall@10 >= {TARGET_RECALL} vs exact filtered",
                      "measured": f["recall"], "met": f["recall"] >= TARGET_RECALL,
                      "shortfall": None if f["recall"] >= TARGET_RECALL else f"recall {f['recall']:.4f}"})
    return goals


def _load_npy(path: Path, what: str) -> np.ndarray:

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
    return normalize(arr)


def _data_sets(args: SuiteOptions, kinds: Sequence[str], sizes: Sequence[int], dim: int,
               nq: int) -> Iterator[tuple[str, dict[str, Any], np.ndarray, np.ndarray]]:
    """``(label, description, base, queries)`` for each data set and size, generated lazily."""
    for kind in kinds:
        if kind == "embedding":
            spec = load_spectrum(args.spectrum) if args.spectrum else load_spectrum()
            desc = {"source": "synthetic", "generator": "embedding_shaped_vectors", "dim": dim, "seed": args.seed,
                    "near_duplicates": args.near_duplicates, "spectrum_source": spec.source,
                    "spectrum_participation_ratio": spec.participation_ratio(), "spectrum_mean_norm": spec.mean_norm}

            def gen(m: int, stream: int, spec: Any = spec) -> np.ndarray:
                return embedding_shaped_vectors(m, dim, spectrum=spec, near_duplicates=args.near_duplicates,
                                                seed=args.seed, stream=stream)
        else:
            desc = {"source": "synthetic", "generator": "clustered_unit_vectors", "clusters": args.clusters,
                    "spread": args.spread, "decay": args.decay, "seed": args.seed, "dim": dim}

            def gen(m: int, stream: int) -> np.ndarray:
                return clustered_unit_vectors(m, dim, clusters=args.clusters, spread=args.spread,
                                              decay=args.decay, seed=args.seed, stream=stream)
        queries = gen(nq, 1)
        for n in sizes:
            yield f"{kind} n={n:,}", {**desc, "data": kind}, gen(n, 0), queries


def run(args: SuiteOptions) -> dict[str, Any]:
    """``tki-bench search``: see the module docstring. Writes the Pareto PNG under ``args.suite_dir``."""
    from tki_sdk.benchmarks.plots import plot_pareto

    defaults = QUICK_DEFAULTS if getattr(args, "quick", False) else FULL_DEFAULTS
    sizes = args.sizes or defaults["sizes"]
    dim = args.dim or defaults["dim"]
    nq = args.queries or defaults["queries"]
    kinds = args.data or defaults["data"]
    conn = args.connectivity or defaults["connectivity"]
    efs = args.expansion_search or defaults["expansion_search"]
    threads = args.threads or usable_cpus()
    progress = not getattr(args, "no_progress", False)
    if dim < 1 or nq < 1 or args.k < 1 or args.clusters < 1 or threads < 1:
        raise UsageError("--dim, --queries, --k, --clusters and --threads must be positive")
    if not 0.0 < args.target_recall <= 1.0:
        raise UsageError("--target-recall must be in (0, 1]")
    if args.spectrum is not None and not args.spectrum.is_file():
        raise UsageError(f"--spectrum file {args.spectrum} not found")
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover
        load = None
    common = dict(k=args.k, dtypes=args.dtypes, connectivity=conn, expansion_add=args.expansion_add,
                  expansion_search=efs, indexes=args.indexes, faiss_max_nlist=args.faiss_max_nlist,
                  filter_fractions=args.filters, filter_queries=args.filter_queries,
                  target_recall=args.target_recall, threads=threads,
                  exact_usearch_queries=args.exact_usearch_queries, min_time=args.min_time, progress=progress,
                  seed=args.seed)
    runs: list[dict[str, Any]] = []
    suite_dir = Path(args.suite_dir)
    stem = args.name or ("quick" if getattr(args, "quick", False) else "search")

    def checkpoint(partial: dict[str, Any]) -> None:


        path = suite_dir / f"{stem}.partial.json"
        path.write_text(json.dumps(to_jsonable({"finished_runs": runs, "current": partial}), indent=1))

    common["checkpoint"] = checkpoint
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
        desc = {"source": "file", "data": "file", "vectors": str(args.vectors),
                "query_vectors": str(args.query_vectors) if args.query_vectors else "last rows held out"}
        r = run_comparison(base, qv, label=f"{args.vectors.name} n={base.shape[0]:,}", **common)
        runs.append({**r, "data": desc})
        name = args.name or f"real_{args.vectors.stem}"
    else:
        for label, desc, base, queries in _data_sets(args, kinds, sizes, dim, nq):
            if progress:
                _status.info(f"search: {label} d={dim} queries={nq} threads={threads}")
            r = run_comparison(base, queries, label=label, **common)
            runs.append({**r, "data": desc})
            del base
        name = args.name or ("quick" if getattr(args, "quick", False) else f"n{max(sizes)}_d{dim}")
    for r in runs:
        r["goals"] = evaluate_goals(r)
        r["load_average_at_start"] = load
    largest = max(runs, key=lambda r: r["n"])
    target = {
        "recall_at_10": TARGET_RECALL, "speedup_vs_exact": TARGET_SPEEDUP, "vs_faiss_hnsw": TARGET_FAISS_RATIO,
        "build_vs_faiss_hnsw": TARGET_BUILD_VS_FAISS, "memory_vs_faiss_hnsw": TARGET_MEMORY_VS_FAISS,
        "i8_memory_fraction": TARGET_I8_MEMORY, "n": TARGET_N,
        "largest_n_run": largest["n"],
        "note": ("evaluated at the target size" if largest["n"] >= TARGET_N else
                 f"the goals are defined at {TARGET_N:,} vectors; the largest size run here is {largest['n']:,}"),
    }
    (suite_dir / f"{stem}.partial.json").unlink(missing_ok=True)
    panels = {r["label"]: [{"index": i["index"], "points": [(s["recall"], s["qps"]) for s in i["sweep"]]}
                          for i in r["indexes"]] for r in runs}
    exact_qps = {r["label"]: r["exact"]["numpy_qps"] for r in runs}
    png = plot_pareto(panels, suite_dir / f"{name}.png", exact_qps=exact_qps, k=args.k,
                      target_recall=TARGET_RECALL, target_speedup=TARGET_SPEEDUP,
                      title=f"recall@{args.k} vs QPS, d={runs[0]['dim']}, {threads} threads (one run, same data)")
    md = render_markdown(runs, target)
    return {"name": name, "runs": runs, "target": target, "threads": threads, "load_average_at_start": load,
            "plots": [str(png)], "markdown": md}


def _mib(b: float | None) -> str:
    return "-" if b is None else f"{b / 2**20:,.0f}"


def render_markdown(runs: Sequence[dict[str, Any]], target: dict[str, Any] | None = None) -> str:
    """Markdown: per data set the table at the target recall, the tuned defaults, filters, goals, full sweeps."""
    out = []
    for r in runs:
        out.append(f"### {r['label']} x {r['dim']} ({r['data'].get('data')}), {r['n_queries']} queries, "
                   f"{r['threads']} threads; exact (numpy BLAS) {r['exact']['numpy_qps']:,.1f} QPS")
        if r.get("faiss_note"):
            out.append(r["faiss_note"])
        rows = [[a["index"], a["qps"], a["vs_faiss_hnsw"], a["vs_exact"], f"{a['max_recall']:.4f}", a["build_rate"],
                 _mib(a["memory_bytes"]), _mib(a["file_bytes"]),
                 "-" if a["memory_vs_gallery_f32"] is None else f"{a['memory_vs_gallery_f32']:.0%}"]
                for a in r["at_target"]]
        out.append(f"At recall@{r['k']} = {TARGET_RECALL} (Pareto frontier, interpolated):\n\n" + markdown_table(
            ["index", "QPS", "x FAISS HNSW", "x exact", "max recall", "build vec/s", "memory MiB", "file MiB",
             "memory vs Gallery f32"], rows))
        rows = [[i["index"], t["expansion_search"], f"{t['recall_estimate']:.4f}", f"{t['recall_lower_bound']:.4f}",
                 f"{t['recall_on_queries']:.4f}", t["qps_on_queries"], t["queries"], t["method"]]
                for i in r["indexes"] if (t := i.get("tuned"))]
        if rows:
            out.append("Self-tuned at build (target recall "
                       f"{r['indexes'][0]['tuned']['target_recall'] if r['indexes'][0].get('tuned') else '-'}):\n\n"
                       + markdown_table(["gallery", "ef", "estimate", "lower bound", "recall on queries", "QPS",
                                         "tuning queries", "method"], rows))
        rows = [[i["index"], p["threads"], f"{p['serial_seconds']:.3f}", f"{p['concurrent_seconds']:.3f}",
                 f"{p['speedup']:.2f}", "yes" if p["parallel_by_design"] else "no"]
                for i in r["indexes"] if (p := i.get("parallel_searches"))]
        if rows:
            p0 = next(i["parallel_searches"] for i in r["indexes"] if i.get("parallel_searches"))
            out.append(f"Concurrent searches (one query per call, {p0['queries']} queries, {p0['usable_cpus']} "
                       "usable CPUs):\n\n"
                       + markdown_table(["gallery", "threads", "one thread s", "all threads s", "speed-up",
                                         "parallel reads"], rows))
        if r["filters"]:
            rows = [[f"{f['fraction']:.0%}", f"{f['matches']:,}", f["path"], f"{f['recall']:.4f}", f["qps"]]
                    for f in r["filters"]]
            out.append(f"Filters ({r['filters'][0]['index']}, ef {r['filters'][0]['expansion_search']}):\n\n"
                       + markdown_table(["matching", "items", "path", "recall@10 vs exact filtered", "QPS"], rows))
        rows = [[g["goal"], "yes" if g["met"] else "NO", g["shortfall"] or ""] for g in r.get("goals", [])]
        if rows:
            out.append("Goals:\n\n" + markdown_table(["goal", "met", "shortfall"], rows, align=["l", "l", "l"]))
        rows = [[i["index"], s["param"], s["value"], f"{s['recall']:.4f}", s["qps"]] for i in r["indexes"]
                for s in i["sweep"]]
        out.append("Sweeps:\n\n" + markdown_table(["index", "param", "value", f"recall@{r['k']}", "QPS"], rows))
    if target:
        out.append(f"Goals are defined at {target['n']:,} x 512 ({target['note']}).")
    return "\n\n".join(out)
