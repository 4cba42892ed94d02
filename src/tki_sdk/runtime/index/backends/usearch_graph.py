"""The usearch HNSW graph behind a ``Gallery`` (:class:`~tki_sdk.runtime.index.backends.GraphIndex`).

usearch's Python ``search`` reuses per-thread scratch space numbered from 0 in every call, so two calls from
different Python threads must not overlap: ``parallel_search`` is ``False`` and the gallery runs them one at
a time. Distances: ``cos``: ``1 - cos``, ``ip``: ``1 - q.x``, ``l2sq``: ``|q - x|^2``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tki_sdk.runtime.native import usearch_index

__all__ = ["UsearchGraph", "USEARCH_FILE"]

USEARCH_FILE = "index.usearch"


class UsearchGraph:
    """usearch ``Index`` (f32 / f16 / i8 storage) over uint64 keys."""

    name = "usearch"
    files = (USEARCH_FILE,)
    parallel_search = False

    def __init__(self, *, ndim: int, metric: str, dtype: str, connectivity: int, expansion_add: int,
                 expansion_search: int) -> None:
        self.metric = metric
        self.ndim = int(ndim)
        self._index: Any = usearch_index().Index(ndim=self.ndim, metric=metric, dtype=dtype,
                                                 connectivity=connectivity, expansion_add=expansion_add,
                                                 expansion_search=expansion_search)

    @property
    def expansion_search(self) -> int:
        return int(self._index.expansion_search)

    @expansion_search.setter
    def expansion_search(self, value: int) -> None:
        self._index.expansion_search = int(value)

    def __len__(self) -> int:
        return len(self._index)

    def keys(self) -> np.ndarray:
        return np.asarray(self._index.keys, dtype=np.uint64)

    def contains(self, keys: np.ndarray) -> np.ndarray:
        return np.asarray(self._index.contains(keys), dtype=bool).reshape(-1)

    def add(self, keys: np.ndarray, vectors: np.ndarray, threads: int) -> None:
        self._index.add(keys, vectors, threads=threads)

    def remove(self, keys: np.ndarray) -> None:
        self._index.remove(keys)

    def get(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = np.zeros((keys.size, self.ndim), dtype=np.float32)
        found = np.zeros(keys.size, dtype=bool)
        if keys.size:
            for i, v in enumerate(self._index.get(keys, dtype="f32")):
                if v is not None:
                    out[i], found[i] = v, True
        return out, found

    def search(self, queries: np.ndarray, k: int, threads: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        res = self._index.search(queries, k, threads=threads)
        nq = queries.shape[0]
        if hasattr(res, "counts"):
            return (np.asarray(res.keys).reshape(nq, -1), np.asarray(res.distances).reshape(nq, -1),
                    np.asarray(res.counts).reshape(-1))
        keys = np.asarray(res.keys).reshape(1, -1)
        return keys, np.asarray(res.distances).reshape(1, -1), np.array([keys.shape[1]])

    def save(self, folder: Path) -> None:
        self._index.save(str(folder / USEARCH_FILE))

    def load(self, folder: Path, view: bool) -> None:
        path = str(folder / USEARCH_FILE)
        if view:
            self._index.view(path)
        else:
            self._index.load(path)
        if self._index.ndim != self.ndim:
            raise ValueError(f"{USEARCH_FILE} holds {self._index.ndim}-d vectors, gallery.json says {self.ndim}")

    def memory_bytes(self) -> int:
        return int(self._index.memory_usage)

    def serialized_bytes(self) -> int:
        return int(self._index.serialized_length)
