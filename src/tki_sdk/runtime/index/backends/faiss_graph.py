"""FAISS's HNSW graph (``IndexHNSWFlat``) behind a ``Gallery`` (:class:`~tki_sdk.runtime.index.backends.GraphIndex`).

float32 storage only. Metrics: ``ip`` (FAISS ``METRIC_INNER_PRODUCT``, similarity ``s = q.x``, returned as
the distance ``1 - s``) for ``ip`` graphs and ``cos`` galleries (whose vectors are unit length), ``l2sq``
(``METRIC_L2``, ``|q - x|^2``). ``M`` is the gallery's ``connectivity``: FAISS links a new node to up to
``2 M`` neighbours on the base layer and ``M`` above it; ``efConstruction`` is ``expansion_add``.

FAISS numbers its vectors 0, 1, 2, ... in insertion order (slots). This module keeps the key of every slot
(:data:`SLOTS_SIDE_FILE`, saved beside the graph) and a sorted copy of the live keys for lookups.
FAISS's HNSW cannot delete: removal marks the slot dead (a tombstone). Searches then pass FAISS a bitmap of
live slots (``SearchParametersHNSW(sel=IDSelectorBitmap)``): dead nodes still route the walk but are never
returned. A removed key added again gets a new slot. When dead slots outnumber live ones, the next ``add``
rebuilds the graph from the live vectors (:meth:`FaissGraph.compact`; its time grows with the gallery).

Nodes are renumbered in breadth-first order of the base layer (:mod:`.graph_order`) once the graph holds
:data:`REORDER_FROM` nodes and again each time it has doubled since: a search then finds a node's
neighbours near it in memory, which matters once the graph is far larger than the CPU's caches. Keys do not
change; only slots do.

FAISS releases the GIL while it searches, so searches from several threads run in parallel
(``parallel_search``); ``threads`` sets FAISS's OpenMP threads for a batch. A view (``Gallery.view``) maps
the graph file (``IO_FLAG_MMAP``).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from tki_sdk.common.cpu import usable_cpus
from tki_sdk.common.extras import missing_extra
from tki_sdk.runtime.index.backends.graph_order import bfs_order

__all__ = ["FaissGraph", "FAISS_FILE", "SLOTS_SIDE_FILE", "DEAD_SLOT", "REORDER_FROM"]

log = logging.getLogger(__name__)

FAISS_FILE = "index.faiss"
SLOTS_SIDE_FILE = "index.faiss.slots.npy"
#: The key recorded for a dead slot (the gallery refuses it as a key: it pads short result rows).
DEAD_SLOT = np.uint64(np.iinfo(np.uint64).max)
#: Graphs from this many nodes are renumbered in breadth-first order (smaller ones fit in the CPU's caches).
REORDER_FROM = 16_384


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as e:
        raise missing_extra("index='faiss' needs FAISS (faiss-cpu)", "runtime") from e
    return faiss


class FaissGraph:
    """FAISS ``IndexHNSWFlat`` over uint64 keys, with tombstone removal and compaction."""

    name = "faiss"
    files = (FAISS_FILE, SLOTS_SIDE_FILE)
    parallel_search = True

    def __init__(self, *, ndim: int, metric: str, connectivity: int, expansion_add: int,
                 expansion_search: int) -> None:
        faiss = _faiss()
        if metric not in ("ip", "cos", "l2sq"):
            raise ValueError(f"index faiss has no metric {metric!r}; use ip or l2sq")
        self.metric = "l2sq" if metric == "l2sq" else "ip"
        self.ndim = int(ndim)
        self._m = int(connectivity)
        self._efc = int(expansion_add)
        self._ef = int(expansion_search)
        self._faiss_metric = faiss.METRIC_L2 if self.metric == "l2sq" else faiss.METRIC_INNER_PRODUCT
        self._index: Any = self._empty()
        self._slots = np.zeros(0, dtype=np.uint64)  # key of each slot, DEAD_SLOT when removed
        self._live = np.zeros(0, dtype=np.uint64)  # sorted live keys
        self._live_slot = np.zeros(0, dtype=np.int64)  # their slots
        self._bitmap = np.zeros(0, dtype=np.uint8)  # bit i of byte i // 8: slot i is live (_live_bits)
        self._ordered = 0  # nodes at the last renumbering

    def _empty(self) -> Any:
        faiss = _faiss()
        index = faiss.IndexHNSWFlat(self.ndim, self._m, self._faiss_metric)
        index.hnsw.efConstruction = self._efc
        index.hnsw.efSearch = self._ef
        return index

    # -- sizes and lookups ------------------------------------------------------------------------
    @property
    def expansion_search(self) -> int:
        return self._ef

    @expansion_search.setter
    def expansion_search(self, value: int) -> None:
        self._ef = int(value)
        self._index.hnsw.efSearch = self._ef

    def __len__(self) -> int:
        return int(self._live.size)

    @property
    def dead_slots(self) -> int:
        """Removed items whose nodes are still in the graph."""
        return int(self._slots.size - self._live.size)

    def keys(self) -> np.ndarray:
        return self._live.copy()

    def _slots_of(self, keys: np.ndarray) -> np.ndarray:
        """Slot of each key (int64, ``-1`` where absent)."""
        keys = np.asarray(keys, dtype=np.uint64).reshape(-1)
        if not self._live.size:
            return np.full(keys.size, -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self._live, keys), self._live.size - 1)
        return np.where(self._live[at] == keys, self._live_slot[at], -1)

    def contains(self, keys: np.ndarray) -> np.ndarray:
        return self._slots_of(keys) >= 0

    def _live_bits(self) -> None:
        """The live-slot bitmap FAISS's ``IDSelectorBitmap`` reads (bit ``i & 7`` of byte ``i >> 3``), from
        the slot keys."""
        self._bitmap = np.packbits(self._slots != DEAD_SLOT, bitorder="little")

    def _index_live(self) -> None:
        """Rebuild the sorted live keys and the live bitmap from the slot keys."""
        slots = np.flatnonzero(self._slots != DEAD_SLOT)
        order = np.argsort(self._slots[slots], kind="stable")
        self._live = self._slots[slots][order]
        self._live_slot = slots[order].astype(np.int64)
        self._live_bits()

    # -- mutation -------------------------------------------------------------------------------
    def add(self, keys: np.ndarray, vectors: np.ndarray, threads: int) -> None:
        """Append new keys (the gallery has refused present ones) to new slots; compacts first when dead
        slots outnumber live ones."""
        keys = np.asarray(keys, dtype=np.uint64).reshape(-1)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.dead_slots > max(len(self), 1024):
            self.compact(threads)
        self._threads(threads)
        first = self._slots.size
        self._index.add(vectors)
        slots = np.arange(first, first + keys.size, dtype=np.int64)
        self._slots = np.concatenate([self._slots, keys])
        order = np.argsort(keys, kind="stable")
        at = np.searchsorted(self._live, keys[order])
        self._live = np.insert(self._live, at, keys[order])
        self._live_slot = np.insert(self._live_slot, at, slots[order])
        self._live_bits()
        if self._slots.size >= REORDER_FROM and self._slots.size >= 2 * self._ordered:
            self.reorder()

    def reorder(self) -> None:
        """Renumber the nodes in breadth-first order of the base layer from the entry point
        (:func:`~tki_sdk.runtime.index.backends.graph_order.bfs_order`; FAISS ``permute_entries``)."""
        faiss = _faiss()
        n = int(self._index.ntotal)
        if n < 2:
            return
        h = self._index.hnsw
        width = int(h.nb_neighbors(0))
        first = faiss.vector_to_array(h.offsets)[:n].astype(np.int64)
        links = faiss.vector_to_array(h.neighbors)[first[:, None] + np.arange(width)[None, :]]
        perm = bfs_order(links, int(h.entry_point))
        del links
        self._index.permute_entries(perm)
        self._slots = self._slots[perm]
        self._index_live()
        self._ordered = n

    def remove(self, keys: np.ndarray) -> None:
        slots = self._slots_of(keys)
        slots = slots[slots >= 0]
        if not slots.size:
            return
        self._slots[slots] = DEAD_SLOT
        self._live_bits()
        gone = np.isin(self._live_slot, slots)
        self._live, self._live_slot = self._live[~gone], self._live_slot[~gone]

    def compact(self, threads: int = 0) -> None:
        """Rebuild the graph from the live vectors (same keys, slots renumbered 0..n-1); drops the tombstones."""
        if not self.dead_slots:
            return
        log.info("faiss graph: rebuilding %d live items to drop %d removed ones", len(self), self.dead_slots)
        order = np.sort(self._live_slot)
        vectors = self._index.reconstruct_batch(order) if order.size else np.zeros((0, self.ndim), np.float32)
        keys = self._slots[order]
        self._index = self._empty()
        self._threads(threads)
        if keys.size:
            self._index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self._slots = keys.astype(np.uint64)
        self._index_live()
        self._ordered = 0
        if self._slots.size >= REORDER_FROM:
            self.reorder()

    # -- reading ----------------------------------------------------------------------------------
    def get(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        slots = self._slots_of(keys)
        found = slots >= 0
        out = np.zeros((slots.size, self.ndim), dtype=np.float32)
        if found.any():
            out[found] = self._index.reconstruct_batch(slots[found])
        return out, found

    def search(self, queries: np.ndarray, k: int, threads: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """FAISS answers ``-1`` past the last result it found (tiny galleries, tombstones); ``counts`` says
        how many columns of each row are valid."""
        faiss = _faiss()
        nq = queries.shape[0]
        k = min(int(k), self._live.size)
        if k == 0:
            return np.zeros((nq, 0), np.uint64), np.zeros((nq, 0), np.float32), np.zeros(nq, np.int64)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        ef = max(self._ef, k)  # FAISS keeps efSearch below k when given in the parameters: k results need ef >= k
        bitmap = self._bitmap  # held for the whole call: the selector points into it
        if self.dead_slots:
            sel = faiss.IDSelectorBitmap(self._slots.size, faiss.swig_ptr(bitmap))
            params = faiss.SearchParametersHNSW(efSearch=ef, sel=sel)
        else:
            sel, params = None, faiss.SearchParametersHNSW(efSearch=ef)
        # FAISS's HNSW search splits the queries over OpenMP threads: never more threads than queries (a
        # single query on a team of threads leaves the others spinning, taking CPU from the caller's work).
        self._threads(threads, most=nq)
        sims, slots = self._index.search(queries, k, params=params)
        del sel
        valid = slots >= 0
        keys = np.where(valid, self._slots[np.where(valid, slots, 0)], DEAD_SLOT).astype(np.uint64)
        dist = sims if self.metric == "l2sq" else (1.0 - sims)
        dist = np.where(valid, dist, np.inf).astype(np.float32)
        counts = valid.sum(axis=1).astype(np.int64)
        if not (valid == (np.arange(k)[None, :] < counts[:, None])).all():  # valid columns first, always
            order = np.argsort(~valid, axis=1, kind="stable")
            keys, dist = np.take_along_axis(keys, order, 1), np.take_along_axis(dist, order, 1)
        return keys, dist, counts

    @staticmethod
    def _threads(threads: int, most: int | None = None) -> None:
        """FAISS's OpenMP threads for the calling thread's next calls (OpenMP keeps the setting per thread,
        so every call sets it): ``threads``, or every usable CPU when ``<= 0``; at most ``most``, at least 1."""
        n = int(threads) if threads > 0 else usable_cpus()
        _faiss().omp_set_num_threads(max(1, n if most is None else min(n, int(most))))

    # -- files ------------------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        _faiss().write_index(self._index, str(folder / FAISS_FILE))
        np.save(folder / SLOTS_SIDE_FILE, self._slots)

    def load(self, folder: Path, view: bool) -> None:
        faiss = _faiss()
        slots = np.load(folder / SLOTS_SIDE_FILE, allow_pickle=False)
        if slots.ndim != 1 or slots.dtype != np.uint64:
            raise ValueError(f"{SLOTS_SIDE_FILE} holds {slots.dtype} {list(slots.shape)}, not uint64 keys")
        flags = faiss.IO_FLAG_MMAP if view else 0
        index = faiss.read_index(str(folder / FAISS_FILE), flags)
        if not isinstance(index, faiss.IndexHNSWFlat):
            raise ValueError(f"{FAISS_FILE} holds a {type(index).__name__}, not an IndexHNSWFlat")
        if index.d != self.ndim:
            raise ValueError(f"{FAISS_FILE} holds {index.d}-d vectors, gallery.json says {self.ndim}")
        if index.metric_type != self._faiss_metric:
            raise ValueError(f"{FAISS_FILE} was built for another metric than gallery.json's {self.metric}")
        if index.ntotal != slots.size:
            raise ValueError(f"{FAISS_FILE} holds {index.ntotal} vectors, {SLOTS_SIDE_FILE} names {slots.size}")
        live = slots[slots != DEAD_SLOT]
        if np.unique(live).size != live.size:
            raise ValueError(f"{SLOTS_SIDE_FILE} names a key twice")
        index.hnsw.efSearch = self._ef
        self._index, self._slots = index, slots.copy()
        self._m = int(index.hnsw.nb_neighbors(1))
        self._efc = int(index.hnsw.efConstruction)
        self._index_live()
        self._ordered = int(slots.size)

    def serialized_bytes(self) -> int:
        """Vectors (``4 D`` bytes each), FAISS's links (4 bytes per neighbour slot on every layer of every
        node, plus an 8-byte offset and a 4-byte level per node) and the slot keys (8 bytes per slot)."""
        h = self._index.hnsw
        graph = 4 * int(h.neighbors.size()) + 8 * int(h.offsets.size()) + 4 * int(h.levels.size())
        return 4 * self.ndim * int(self._index.ntotal) + graph + 8 * int(self._slots.size)

    def memory_bytes(self) -> int:
        """:meth:`serialized_bytes` plus what lives in memory only: the sorted live keys with their slots
        (16 bytes per item) and the live-slot bitmap."""
        return self.serialized_bytes() + 16 * int(self._live.size) + self._bitmap.nbytes
