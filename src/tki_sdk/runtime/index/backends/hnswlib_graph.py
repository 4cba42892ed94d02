"""The hnswlib HNSW graph behind a ``Gallery`` (:class:`~tki_sdk.runtime.index.backends.GraphIndex`).

float32 storage only (hnswlib has no f16 / i8). hnswlib spaces: ``ip`` (distance ``1 - q.x``) for ``ip``
graphs (and ``cos`` galleries, whose vectors are unit length), ``l2`` (``|q - x|^2``) for ``l2sq``.
Removal marks the item deleted (a tombstone: searches skip it, its slot is reused by the next insert); the
live keys are kept here as a sorted array and saved beside the graph (:data:`KEYS_SIDE_FILE`), since the
graph file keeps the labels of tombstones. ``knn_query`` releases the GIL and may run from several threads
at once (``parallel_search``). A view (``Gallery.view``) loads the graph into memory: hnswlib cannot map it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import hnswlib
import numpy as np

__all__ = ["HnswlibGraph", "HNSWLIB_FILE", "KEYS_SIDE_FILE"]

HNSWLIB_FILE = "index.hnswlib"
KEYS_SIDE_FILE = "index.hnswlib.keys.npy"
_SPACES = {"ip": "ip", "l2sq": "l2", "cos": "ip"}


class HnswlibGraph:
    """hnswlib ``Index`` over uint64 labels with tombstone removal."""

    name = "hnswlib"
    files = (HNSWLIB_FILE, KEYS_SIDE_FILE)
    parallel_search = True

    def __init__(self, *, ndim: int, metric: str, connectivity: int, expansion_add: int,
                 expansion_search: int) -> None:
        if metric not in _SPACES:
            raise ValueError(f"index hnswlib has no metric {metric!r}; use ip or l2sq")
        self.metric = "ip" if metric == "cos" else metric
        self.ndim = int(ndim)
        self._ef = int(expansion_search)
        self._space = _SPACES[metric]
        self._index: Any = hnswlib.Index(space=self._space, dim=self.ndim)
        self._index.init_index(max_elements=1024, ef_construction=int(expansion_add), M=int(connectivity),
                               allow_replace_deleted=True)
        self._index.set_ef(self._ef)
        self._live = np.zeros(0, dtype=np.uint64)  # sorted live keys
        self._tombs: set[int] = set()  # removed keys whose labels may still sit in the graph

    @property
    def expansion_search(self) -> int:
        return self._ef

    @expansion_search.setter
    def expansion_search(self, value: int) -> None:
        self._ef = int(value)
        self._index.set_ef(self._ef)

    def __len__(self) -> int:
        return int(self._live.size)

    def keys(self) -> np.ndarray:
        return self._live.copy()

    def contains(self, keys: np.ndarray) -> np.ndarray:
        keys = np.asarray(keys, dtype=np.uint64).reshape(-1)
        if not self._live.size:
            return np.zeros(keys.size, dtype=bool)
        at = np.minimum(np.searchsorted(self._live, keys), self._live.size - 1)
        return self._live[at] == keys

    def add(self, keys: np.ndarray, vectors: np.ndarray, threads: int) -> None:
        """Insert new keys (the gallery has refused present ones). A key removed earlier whose tombstone is
        still in the graph is revived and overwritten in place; the others take a tombstone's slot or a new
        one."""
        keys = np.asarray(keys, dtype=np.uint64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        nt = -1 if threads <= 0 else int(threads)
        revived = np.zeros(keys.size, dtype=bool)
        if self._tombs:
            for i, key in enumerate(keys.tolist()):
                if key in self._tombs:
                    self._tombs.discard(key)
                    try:
                        self._index.unmark_deleted(key)
                        revived[i] = True
                    except RuntimeError:  # its slot was already given to another key
                        pass
        if revived.any():  # overwrite in place (replace_deleted would give the label a second slot)
            self._index.add_items(vectors[revived], keys[revived], num_threads=nt, replace_deleted=False)
        fresh = ~revived
        if fresh.any():
            need = self._index.element_count + int(fresh.sum())
            if need > self._index.get_max_elements():
                self._index.resize_index(max(need, 2 * self._index.get_max_elements()))
            self._index.add_items(vectors[fresh], keys[fresh], num_threads=nt, replace_deleted=True)
        self._live = np.union1d(self._live, keys).astype(np.uint64)

    def remove(self, keys: np.ndarray) -> None:
        keys = np.asarray(keys, dtype=np.uint64).reshape(-1)
        for key in keys.tolist():
            self._index.mark_deleted(key)
            self._tombs.add(key)
        self._live = np.setdiff1d(self._live, keys, assume_unique=True).astype(np.uint64)

    def get(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keys = np.asarray(keys, dtype=np.uint64).reshape(-1)
        found = self.contains(keys)
        out = np.zeros((keys.size, self.ndim), dtype=np.float32)
        if found.any():
            out[found] = np.asarray(self._index.get_items(keys[found], return_type="numpy"), dtype=np.float32)
        return out, found

    def search(self, queries: np.ndarray, k: int, threads: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """hnswlib refuses a batch where some query finds fewer than ``k`` live items (a tiny or heavily
        deleted graph); those are answered one by one with ``k`` halved until they succeed."""
        nq = queries.shape[0]
        k = min(int(k), self._live.size)
        if k == 0:
            return np.zeros((nq, 0), np.uint64), np.zeros((nq, 0), np.float32), np.zeros(nq, np.int64)
        nt = -1 if threads <= 0 else int(threads)
        try:
            labels, dist = self._index.knn_query(queries, k=k, num_threads=nt)
            return (np.asarray(labels, dtype=np.uint64), np.asarray(dist, dtype=np.float32),
                    np.full(nq, k, dtype=np.int64))
        except RuntimeError:
            pass
        keys = np.zeros((nq, k), dtype=np.uint64)
        dists = np.full((nq, k), np.inf, dtype=np.float32)
        counts = np.zeros(nq, dtype=np.int64)
        for i in range(nq):
            m = k
            while m >= 1:
                try:
                    lab, d = self._index.knn_query(queries[i : i + 1], k=m, num_threads=1)
                except RuntimeError:
                    m //= 2
                    continue
                keys[i, :m], dists[i, :m], counts[i] = lab[0], d[0], m
                break
        return keys, dists, counts

    def save(self, folder: Path) -> None:
        self._index.save_index(str(folder / HNSWLIB_FILE))
        np.save(folder / KEYS_SIDE_FILE, self._live)

    def load(self, folder: Path, view: bool) -> None:
        live = np.load(folder / KEYS_SIDE_FILE, allow_pickle=False)
        if live.ndim != 1 or live.dtype != np.uint64:
            raise ValueError(f"{KEYS_SIDE_FILE} holds {live.dtype} {list(live.shape)}, not uint64 keys")
        self._index = hnswlib.Index(space=self._space, dim=self.ndim)  # a fresh one: loading into an inited
        self._index.load_index(str(folder / HNSWLIB_FILE), max_elements=0, allow_replace_deleted=True)  # one warns
        if self._index.dim != self.ndim:
            raise ValueError(f"{HNSWLIB_FILE} holds {self._index.dim}-d vectors, gallery.json says {self.ndim}")
        labels = np.asarray(self._index.get_ids_list(), dtype=np.uint64)
        if not np.isin(live, labels).all():
            raise ValueError(f"{KEYS_SIDE_FILE} names keys that {HNSWLIB_FILE} does not hold")
        self._live = np.unique(live)
        self._tombs = set(np.setdiff1d(labels, self._live).tolist())
        self._index.set_ef(self._ef)

    def memory_bytes(self) -> int:
        """Vectors, links and labels of every slot (hnswlib's own layout: the saved graph's size) plus the
        sorted live keys (8 bytes each)."""
        return int(self._index.index_file_size()) + int(self._live.nbytes)

    def serialized_bytes(self) -> int:
        return self.memory_bytes()
