"""The FAISS side of the search suite: the indexes a user would build instead of a Gallery.

* ``HNSW32``: ``faiss.IndexHNSWFlat(d, 32, METRIC_INNER_PRODUCT)``, swept over ``efSearch``. This is also
  what autofaiss chooses for 1M x 512 when the float32 graph fits its memory budget (16 GB by default:
  ``m = floor((budget / (4 n) - d) / 2) >= 8`` gives ``HNSW{min(m, 32)}``).
* ``IVF{nlist},Flat``: inverted lists of float32 vectors, swept over ``nprobe``. ``nlist`` follows
  autofaiss's rule ``2^round(log2(4 sqrt(n)))`` (:func:`autofaiss_nlist`), capped by ``max_nlist``
  (autofaiss's choice at 1M, 16,384 lists behind an HNSW coarse quantizer, needs about an hour of k-means
  on 2 cores; the cap and the reason are recorded in the result).
* ``IVF{nlist},PQ{m}x8``: product quantisation sized as autofaiss does for a memory budget
  (:func:`autofaiss_pq`: the largest ``m`` in 256, 128, 64, ... whose ``(4 d) / (m + 8)`` compression meets
  ``4 n d / budget``), with the budget set to 40% of the float32 vectors (the Gallery's i8 memory goal).
  autofaiss adds an OPQ rotation; it is left out here (its training alone exceeds this suite's time on 2
  cores) and the result says so.

All FAISS indexes use ``threads`` OpenMP threads (``faiss.omp_set_num_threads``), the same as the Gallery.
Inner product on unit vectors ranks like cosine, so ids are comparable with the exact ground truth.
"""
from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

__all__ = ["FaissBuild", "autofaiss_nlist", "autofaiss_pq", "build_faiss", "faiss_available", "faiss_specs",
           "sweep_param"]


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def autofaiss_nlist(n: int) -> int:
    """autofaiss's first choice of IVF list count for ``n`` vectors (``get_optimal_nb_clusters``)."""
    if n < 1_000_000:
        return int(2 ** round(math.log2(4 * math.sqrt(max(n, 1)))))
    if n < 10_000_000:
        return 16_384
    return 65_536


def autofaiss_pq(n: int, dim: int, budget_bytes: float) -> int:
    """autofaiss's product-quantiser size for a memory budget (``get_optimal_quantization``): the first
    ``m`` in 256, 128, 64, 48, 32, 24, 16, 8, 4 below ``dim`` (and dividing it, which FAISS requires)
    whose code of ``m + 8`` bytes compresses float32 enough to fit ``budget_bytes``."""
    target = 4.0 * n * dim / budget_bytes
    for m in (256, 128, 64, 48, 32, 24, 16, 8, 4):
        if m < dim and dim % m == 0 and (4 * dim) / (m + 8) >= target:
            return m
    return 4


@dataclass
class FaissBuild:
    """One built FAISS index and its costs."""

    name: str
    key: str
    index: Any
    param: str  # the search parameter swept: efSearch or nprobe
    build_seconds: float
    train_seconds: float
    memory_bytes: int
    file_bytes: int
    notes: list[str] = field(default_factory=list)

    def set_param(self, value: int) -> None:
        import faiss

        if self.param == "efSearch":
            faiss.downcast_index(self.index).hnsw.efSearch = int(value)
        else:
            faiss.extract_index_ivf(self.index).nprobe = int(value)

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        _, ids = self.index.search(queries, k)
        return ids


def faiss_specs(n: int, dim: int, *, max_nlist: int = 4096, hnsw_m: int = 32,
                pq_budget_fraction: float = 0.4) -> list[dict[str, Any]]:
    """The FAISS indexes compared for ``n x dim`` vectors: kind, name, factory key, swept parameter, values,
    notes. IVF-PQ needs ``39 * 256`` training vectors (8-bit codes) and is left out below that."""
    nlist_auto = autofaiss_nlist(n)
    nlist = min(nlist_auto, max_nlist, max(1, n // 39))
    notes_ivf = [] if nlist == nlist_auto else [
        f"autofaiss would use {nlist_auto} lists at this size; capped at {nlist} (k-means time on this machine)"]
    pq = autofaiss_pq(n, dim, pq_budget_fraction * 4.0 * n * dim)
    probes = [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256) if p <= nlist]
    specs = [
        {"kind": "faiss-hnsw", "name": f"faiss HNSW{hnsw_m}", "key": f"HNSW{hnsw_m},Flat", "param": "efSearch",
         "values": [16, 32, 64, 128, 256, 512], "notes": []},
        {"kind": "faiss-ivf", "name": f"faiss IVF{nlist},Flat", "key": f"IVF{nlist},Flat", "param": "nprobe", "values": probes,
         "notes": notes_ivf},
        {"kind": "faiss-ivfpq", "name": f"faiss IVF{nlist},PQ{pq}x8", "key": f"IVF{nlist},PQ{pq}x8", "param": "nprobe", "values": probes,
         "notes": notes_ivf + [f"PQ{pq}: autofaiss's size for a budget of {pq_budget_fraction:.0%} of the float32 "
                               "vectors; its OPQ rotation is left out"]},
    ]
    return specs if n >= 39 * 256 else specs[:2]


def build_faiss(spec: dict[str, Any], base: np.ndarray, *, threads: int, expansion_add: int = 40,
                train_points_per_list: int = 64, seed: int = 0) -> FaissBuild:
    """Build ``spec`` (from :func:`faiss_specs`) on ``base`` with ``threads`` threads; IVF indexes train on a
    random sample of ``train_points_per_list * nlist`` vectors (k-means, 10 iterations)."""
    import faiss

    faiss.omp_set_num_threads(int(threads))
    dim = base.shape[1]
    t_train = 0.0
    t0 = time.perf_counter()
    if spec["param"] == "efSearch":
        m = int(spec["key"].split(",")[0][4:])
        index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(expansion_add)
    else:
        index = faiss.index_factory(dim, spec["key"], faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.niter = 10
        ivf = faiss.downcast_index(ivf)
        if hasattr(ivf, "do_polysemous_training"):  # index_factory turns it on; hours of annealing, unused here
            ivf.do_polysemous_training = False
        ntrain = min(base.shape[0], train_points_per_list * ivf.nlist)
        rng = np.random.default_rng(seed)
        sample = base[np.sort(rng.choice(base.shape[0], ntrain, replace=False))]
        tt = time.perf_counter()
        index.train(sample)
        t_train = time.perf_counter() - tt
    step = 100_000
    for s in range(0, base.shape[0], step):
        index.add(base[s : s + step])
    t_build = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "index.faiss")
        faiss.write_index(index, path)
        file_bytes = os.path.getsize(path)
    notes = list(spec.get("notes", []))
    if spec["param"] == "efSearch":
        notes.append(f"efConstruction {expansion_add}")
    # FAISS keeps (almost) exactly its serialised structures in memory.
    return FaissBuild(name=spec["name"], key=spec["key"], index=index, param=spec["param"], build_seconds=t_build,
                      train_seconds=t_train, memory_bytes=file_bytes, file_bytes=file_bytes, notes=notes)


def sweep_param(build: FaissBuild, values: Sequence[int], queries: np.ndarray, k: int,
                measure: Any) -> list[dict[str, Any]]:
    """For each parameter value: ``measure(search_fn) -> {recall, qps, ...}``; rows with the value added."""
    rows = []
    for v in values:
        build.set_param(v)
        row = measure(lambda q=queries: build.search(q, k))
        rows.append({"index": build.name, "param": build.param, "value": int(v), **row})
    return rows
