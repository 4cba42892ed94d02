"""Graph index backends of an HNSW ``Gallery``: one :class:`GraphIndex` protocol, three implementations.

- ``faiss`` (:mod:`.faiss_graph`, the default for float32 storage): FAISS's ``IndexHNSWFlat``, float32 only;
  removal leaves a tombstone that searches pass over (a live-slot bitmap) until tombstones outnumber live
  items and the next insert rebuilds; nodes renumbered breadth-first as the graph grows; searches from
  several threads run in parallel (``parallel_search = True``); views map the graph file.
- ``hnswlib`` (:mod:`.hnswlib_graph`): float32 only; removal leaves a tombstone that the next insert reuses;
  parallel searches; views load into memory.
- ``usearch`` (:mod:`.usearch_graph`, the default for f16 / i8 storage, and what every gallery saved before
  backends were recorded used): f32 / f16 / i8 storage, memory-mapped views; its Python searches share
  per-thread scratch space, so a gallery runs them one at a time (``parallel_search = False``).

:func:`default_backend` picks the backend of a new gallery that names none: the fastest at the target
recall in the search suite's 1M x 512 run that stores the gallery's dtype
(``benchmarks/results/search/n1000000_d512_faiss.json``: at float32 and recall@10 0.99 the faiss backend
matched FAISS HNSW32's queries per second in less memory, hnswlib reached 0.87x; usearch stays the only
backend with f16 / i8). Its default M (``IndexConfig.for_backend``) is measured in the ``*_m30_*`` runs.

Every backend stores unit vectors for ``cos`` galleries and answers with the same distances: ``ip``
(``1 - q.x``; on unit vectors this equals ``1 - cos(q, x)``) or ``l2sq`` (``|q - x|^2``). The metric the
graph was built with (:func:`graph_metric`) is recorded in ``gallery.json`` (``index.metric``) so that an
old gallery is loaded as it was built.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from tki_sdk.runtime.index.backends.usearch_graph import UsearchGraph

__all__ = ["GraphIndex", "BACKENDS", "DEFAULT_BACKEND", "LEGACY_BACKEND", "default_backend", "graph_metric",
           "legacy_graph_metric", "make_graph", "check_backend"]

#: Backend names accepted by ``Gallery(index=...)`` and ``tki embed --index``.
BACKENDS: tuple[str, ...] = ("usearch", "hnswlib", "faiss")
#: The backend of a new float32 gallery that names none.
DEFAULT_BACKEND = "faiss"
#: The backend of a gallery saved before ``gallery.json`` recorded one.
LEGACY_BACKEND = "usearch"
#: Storage types each backend holds.
DTYPES_OF: dict[str, tuple[str, ...]] = {"usearch": ("f32", "f16", "i8"), "hnswlib": ("f32",), "faiss": ("f32",)}


def default_backend(dtype: str = "f32") -> str:
    """The backend a new HNSW gallery of ``dtype`` storage gets when it names none: :data:`DEFAULT_BACKEND`
    where it stores ``dtype``, else ``usearch`` (the only backend with f16 / i8)."""
    return DEFAULT_BACKEND if dtype in DTYPES_OF[DEFAULT_BACKEND] else "usearch"


class GraphIndex(Protocol):
    """An HNSW graph over uint64 keys; the gallery holds the locks (writers exclusive; readers shared when
    ``parallel_search``).

    Contract: ``search(q [Q, D] float32, k, threads) -> (keys [Q, m] uint64, distances [Q, m] float32,
    counts [Q])``, row ``i`` valid up to ``counts[i]``, best first; ``get(keys) -> (vectors [n, D] float32,
    found [n] bool)``; ``save(folder)`` writes :attr:`files` into ``folder``; ``load(folder, view)`` reads them
    back (raising ``OSError`` / ``RuntimeError`` / ``ValueError`` on unreadable files)."""

    name: str
    files: tuple[str, ...]
    parallel_search: bool
    metric: str
    ndim: int
    expansion_search: int

    def __len__(self) -> int: ...
    def keys(self) -> np.ndarray: ...
    def contains(self, keys: np.ndarray) -> np.ndarray: ...
    def add(self, keys: np.ndarray, vectors: np.ndarray, threads: int) -> None: ...
    def remove(self, keys: np.ndarray) -> None: ...
    def get(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...
    def search(self, queries: np.ndarray, k: int, threads: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...
    def save(self, folder: Path) -> None: ...
    def load(self, folder: Path, view: bool) -> None: ...
    def memory_bytes(self) -> int: ...


def check_backend(name: str, dtype: str) -> None:
    """Refuse an unknown backend, or a storage the backend lacks (one line, ``ValueError``)."""
    if name not in BACKENDS:
        raise ValueError(f"index {name!r} unknown; use one of {', '.join(BACKENDS)}")
    if dtype not in DTYPES_OF[name]:
        raise ValueError(f"index {name} stores float32 only; use dtype='f32' or index='usearch' for {dtype}")


def graph_metric(metric: str, dtype: str = "f32") -> str:
    """The metric a new graph is built with for a gallery metric: ``cos`` -> ``ip`` for f32 storage (the
    gallery stores unit vectors, so ``1 - q.x`` is ``1 - cos``, and inner product is the cheaper kernel);
    f16 and i8 keep ``cos``: usearch 2.26's f16 / i8 inner-product kernels lose precision its cos kernels do
    not (exact search over 20k embedding-shaped 512-d unit vectors, recall@10: f16 cos 0.9985, f16 ip 0.986);
    ``poincare`` -> ``l2sq`` (candidates, re-ranked exactly); others unchanged."""
    if metric == "cos" and dtype != "f32":
        return "cos"
    return {"cos": "ip", "poincare": "l2sq"}.get(metric, metric)


def legacy_graph_metric(metric: str) -> str:
    """The metric of a graph saved before ``gallery.json`` recorded it (usearch, built with ``cos``)."""
    return {"poincare": "l2sq"}.get(metric, metric)


def make_graph(name: str, *, ndim: int, metric: str, dtype: str, connectivity: int, expansion_add: int,
               expansion_search: int) -> GraphIndex:
    """A new, empty graph of backend ``name`` built with ``metric`` (``cos``, ``ip`` or ``l2sq``)."""
    check_backend(name, dtype)
    if name == "faiss":
        from tki_sdk.runtime.index.backends.faiss_graph import FaissGraph

        return FaissGraph(ndim=ndim, metric=metric, connectivity=connectivity, expansion_add=expansion_add,
                          expansion_search=expansion_search)
    if name == "hnswlib":
        from tki_sdk.runtime.index.backends.hnswlib_graph import HnswlibGraph

        return HnswlibGraph(ndim=ndim, metric=metric, connectivity=connectivity, expansion_add=expansion_add,
                            expansion_search=expansion_search)

    return UsearchGraph(ndim=ndim, metric=metric, dtype=dtype, connectivity=connectivity,
                        expansion_add=expansion_add, expansion_search=expansion_search)
