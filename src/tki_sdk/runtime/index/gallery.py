"""``Gallery``: embeddings + metadata, searched with an HNSW graph (usearch or hnswlib) or exactly, saved atomically.

A gallery holds uint64 keys, one vector per key, and an optional JSON-able metadata dict per key (``path``,
``domain``, ``class``, anything) kept in SQLite. It remembers which model embedded it
(``model_fingerprint``, the hash of the export's ``tki.json``) and refuses queries that say they come from
another model.

Search contract -- ``search(vectors[Q, D], k, where=None) -> (keys[Q, k] uint64, distances[Q, k] float32)``:

- ``cos`` galleries store unit vectors (normalised on ``add``; queries too), which changes no distance and
  lets f16 / i8 storage quantise well;
- rows are best first (smallest distance); distances: ``cos``: ``1 - cos(q, x)`` (computed as ``1 - q.x`` on the
  unit vectors: new graphs use inner product, see :mod:`tki_sdk.runtime.index.backends`);
  ``ip``: ``1 - q.x``; ``l2sq``: ``|q - x|^2``; ``poincare``: the Poincaré-ball geodesic distance
  (:mod:`tki_sdk.runtime.index.poincare`, curvature ``-c`` from the gallery's ``curvature``);
- ``poincare`` galleries hold raw ball points (``tki-export --embedding ball``); vectors outside the ball
  are refused. Their HNSW graph is built on ``l2sq`` and every search re-ranks its
  ``k * rescore_oversample`` candidates by the exact Poincaré distance on a float32 copy (the re-rank hook
  :meth:`Gallery._rerank`); exact ones compute the Poincaré distance to every item;
- ``k`` is at most :data:`MAX_K` (100,000; larger values raise ``ValueError``) and is capped by the gallery
  size: the result has ``min(k, len(gallery))`` columns, so the memory of one search is proportional to
  ``Q * min(k, len(gallery))`` whatever ``k`` was asked for;
- when fewer than that many items match ``where``, the row is padded with :data:`MISSING_KEY`
  (``2**64 - 1``, a key ``add`` refuses) and distance ``+inf``;
- query vectors holding NaN or inf are refused (``ValueError`` naming the row); a search whose index
  returns NaN distances raises :class:`~tki_sdk.runtime.index.store.GalleryDamagedError` (a damaged
  index never answers with NaN);
- ``exact=True`` galleries store a flat matrix and search it by brute force (usearch's exact kernels), so
  they are also the reference for recall; ``exact=False`` galleries use an HNSW graph of the backend chosen
  at creation (``index="usearch"``, ``"hnswlib"`` or ``"faiss"``, recorded in ``gallery.json``; ``None``:
  :func:`~tki_sdk.runtime.index.backends.default_backend`);
- ``where={"domain": "sketch", "class": ["dog", "horse"]}`` (at most
  :data:`~tki_sdk.runtime.index.metadata_store.MAX_WHERE_FIELDS` fields and
  :data:`~tki_sdk.runtime.index.metadata_store.MAX_WHERE_VALUES` values): items whose metadata has ``domain == "sketch"``
  AND ``class`` in the list (a list-valued metadata field matches when any element matches). The result is
  the top ``k`` among the matching items: when at most ``filter_exact_limit`` items match (default 50,000)
  it is computed exactly over just those items; otherwise the HNSW result is over-fetched
  (``k * N / matches * FILTER_OVERFETCH + k`` candidates, widened x4 while the k-th matching hit is not in the first half of
  the list) and queries still unsettled fall back to the exact path. A filter never returns fewer than
  ``min(k, matches)`` hits, and a selective one returns exactly the true top k among the matching items.

On disk a gallery is a versioned folder (:mod:`tki_sdk.runtime.index.store`) whose live version holds
``gallery.json`` (:class:`tki_sdk.common.gallery_manifest.GalleryManifest`, with the size and SHA-256 of
every other file), the graph's files (``index.usearch``; ``index.hnswlib`` and its live keys; ``index.faiss`` and
the key of each slot) or the flat
matrix, and ``meta.sqlite``
(:class:`tki_sdk.runtime.index.metadata_store.MetadataStore`). ``load`` / ``view`` check the files against
``gallery.json`` before reading them (``verify``: ``"auto"`` by default, see
:data:`~tki_sdk.runtime.index.store.VERIFY_MODES`); a damaged gallery raises
:class:`~tki_sdk.runtime.index.store.GalleryDamagedError`, one line naming the file and what to do. Building a gallery from
a folder of images is :mod:`tki_sdk.runtime.pipeline.ingest`.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from tki_sdk.common.atomic import fsync_file
from tki_sdk.common.contract import ContractError
from tki_sdk.common.errors import one_line, printable
from tki_sdk.common.gallery_manifest import MANIFEST_FILE, GalleryManifest
from tki_sdk.common.index_config import IndexConfig
from tki_sdk.runtime.index import poincare
from tki_sdk.runtime.index.backends import (
    LEGACY_BACKEND,
    default_backend,
    GraphIndex,
    check_backend,
    graph_metric,
    legacy_graph_metric,
    make_graph,
)
from tki_sdk.runtime.index.metadata_store import MetadataStore
from tki_sdk.runtime.index.rwlock import ReadWriteLock
from tki_sdk.runtime.index.store import (
    KEYS_FILE,
    META_FILE,
    VECTORS_FILE,
    GalleryDamagedError,
    damaged,
    file_records,
    is_gallery,
    live_version,
    read_current,
    save_version,
    verify_files,
)
from tki_sdk.runtime.index.tuning import (
    DEFAULT_CANDIDATES,
    TuningResult,
    choose_expansion_search,
    exact_topk,
)
from tki_sdk.runtime.native import usearch_index

log = logging.getLogger(__name__)

__all__ = ["Gallery", "ModelMismatchError", "GalleryDamagedError", "MISSING_KEY", "MAX_K", "is_gallery"]

#: Key used to pad result rows that have fewer than k hits (never a valid gallery key).
MISSING_KEY = np.uint64(np.iinfo(np.uint64).max)
#: Largest ``k`` a search accepts (the result has ``min(k, len(gallery))`` columns).
MAX_K = 100_000
#: A broad filter fetches ``k * N / matches * FILTER_OVERFETCH + k`` graph candidates at first: the k
#: matching hits sit, on average, among the first ``k * N / matches``, and the tail of a long HNSW answer is
#: its least reliable part (at 2: recall@10 0.988 with a 10% filter on 1M x 512, hnswlib M 16).
FILTER_OVERFETCH = 4

_METRICS = {"cos": "cos", "cosine": "cos", "ip": "ip", "inner": "ip", "l2sq": "l2sq", "l2": "l2sq",
            "poincare": "poincare"}
_DTYPES = {"f32": np.float32, "f16": np.float16, "i8": np.int8}


class ModelMismatchError(ValueError):
    """Query vectors come from a different model than the one that embedded the gallery."""


#: HNSW graphs smaller than this are built on one thread (see :meth:`Gallery._graph_add`).
SERIAL_ADD_BELOW = 4096


# ---------------------------------------------------------------------------------------------- gallery
class Gallery:
    """Vector gallery over usearch with SQLite metadata; see the module docstring for the full contract.

    Args:
        ndim: vector length.
        metric: ``"cos"`` (default; ``1 - cosine``), ``"ip"`` (``1 - dot``), ``"l2sq"`` or ``"poincare"``
            (Poincaré distance of raw ball points; needs ``curvature``).
        exact: brute-force search over a flat matrix instead of an HNSW graph.
        dtype: storage precision, ``"f32"``, ``"f16"`` or ``"i8"`` (i8: HNSW only).
        connectivity, expansion_add, expansion_search: HNSW parameters (``M``, ``efConstruction``, ``ef``);
            ``None``: the backend's defaults (``IndexConfig.for_backend``); ``expansion_search`` can be
            changed later through the attribute.
        model_fingerprint: ``Embedder.model_fingerprint`` of the model whose embeddings go in.
        model_info: free-form dict stored with the gallery (model name, precision, ...).
        threads: worker threads for usearch calls (0 = all cores).
        filter_exact_limit: filtered searches matching at most this many items are computed exactly.
        rescore: re-rank HNSW results against a float16 copy of the stored vectors (default ``True`` for
            ``i8``, where the quantised graph alone tops out near recall@10 0.95; ``False`` otherwise; may be
            enabled for ``f16`` too; refused for ``f32`` and exact galleries, which need none). Each search
            fetches ``k * rescore_oversample`` HNSW candidates, recomputes their distances in float32 from the
            float16 copy -- ``cos``: ``1 - <q, v> / (|q| |v|)``; ``ip``: ``1 - <q, v>``; ``l2sq``:
            ``|q - v|^2`` -- and returns the top ``k`` of those candidates with these distances. Filtered
            searches re-rank too (their exact path reads the copy). Costs ``2 * ndim + 8`` bytes per item in
            memory and on disk (saved in the same version folder as the graph).
        rescore_oversample: candidates fetched per wanted hit when re-ranking (default 4, >= 1).
        curvature: c of the Poincaré ball (curvature -c) of a ``poincare`` gallery; HNSW ``poincare``
            galleries always re-rank, on a float32 copy.
        index: the HNSW graph's backend (:mod:`tki_sdk.runtime.index.backends`): ``"faiss"`` or ``"hnswlib"``
            (f32 only; other dtypes are refused) or ``"usearch"`` (f32 / f16 / i8); ``None``:
            :func:`~tki_sdk.runtime.index.backends.default_backend` for the dtype. Recorded in
            ``gallery.json``; exact galleries have no graph and ignore it.

    Thread-safe: a readers-writer lock (:class:`~tki_sdk.runtime.index.rwlock.ReadWriteLock`) lets graph
    searches from several threads run together on backends that allow it (``faiss``, ``hnswlib``; usearch's
    run one at a time), while add / remove / save / ``expansion_search`` changes are exclusive.
    """

    def __init__(
        self,
        ndim: int,
        metric: str = "cos",
        exact: bool = False,
        dtype: str = "f32",
        connectivity: int | None = None,
        expansion_add: int | None = None,
        expansion_search: int = IndexConfig.expansion_search,
        *,
        model_fingerprint: str | None = None,
        model_info: dict[str, Any] | None = None,
        threads: int = 0,
        filter_exact_limit: int = 50_000,
        rescore: bool | None = None,
        rescore_oversample: int = 4,
        curvature: float | None = None,
        index: str | None = None,
    ) -> None:
        if int(ndim) < 1:
            raise ValueError("ndim must be >= 1")
        if metric not in _METRICS:
            raise ValueError(f"metric {metric!r} unknown; use cos, ip, l2sq or poincare")
        is_poincare = _METRICS[metric] == "poincare"
        if is_poincare and not (curvature is not None and float(curvature) > 0):
            raise ValueError("metric poincare needs curvature c > 0 (the ball's curvature is -c; tki.json's head_config)")
        if is_poincare and rescore is False and not exact:
            raise ValueError("HNSW poincare galleries always re-rank their candidates by the exact distance; "
                             "leave rescore unset")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype {dtype!r} unknown; use f32, f16 or i8")
        if index is None:
            index = default_backend("f32" if exact else dtype)
        check_backend(index, "f32" if exact else dtype)
        if exact and dtype == "i8":
            raise ValueError("exact galleries store f32 or f16 vectors; use dtype='f32' or 'f16' (or exact=False for i8)")
        if rescore is None:
            rescore = (dtype == "i8" or is_poincare) and not exact
        if rescore and (exact or (dtype == "f32" and not is_poincare)):
            raise ValueError("rescore re-ranks quantised HNSW galleries; use it with dtype='i8' or 'f16' and exact=False")
        if int(rescore_oversample) < 1:
            raise ValueError("rescore_oversample must be >= 1")
        self.rescore = bool(rescore)
        self.rescore_oversample = int(rescore_oversample)
        self.ndim = int(ndim)
        self.metric = _METRICS[metric]
        self.curvature = float(curvature) if is_poincare else None
        self.exact = bool(exact)
        self.dtype = dtype
        self.index = index
        #: The metric the graph is built with (f32 ``cos`` galleries: inner product on their unit vectors).
        self.graph_metric = graph_metric(self.metric, dtype)
        defaults = IndexConfig.for_backend(None if exact else index)
        self.connectivity = int(defaults.connectivity if connectivity is None else connectivity)
        self.expansion_add = int(defaults.expansion_add if expansion_add is None else expansion_add)
        self._expansion_search = int(expansion_search)
        self.model_fingerprint = model_fingerprint
        self.model_info = dict(model_info or {})
        self.threads = int(threads)
        self.filter_exact_limit = int(filter_exact_limit)
        self.tuned: dict[str, Any] | None = None  # what tune() chose and measured (gallery.json "tuned")
        self.readonly = False
        self.path: Path | None = None
        #: How the files were checked when loaded: "sha256", "size", "none" (nothing recorded); None in memory.
        self.verified: str | None = None
        self._lock = ReadWriteLock()
        self._meta = MetadataStore.memory()
        self._index: GraphIndex | Any = None
        self._flat_keys = np.zeros(0, dtype=np.uint64)
        # Flat matrix: the vectors of an exact gallery, or the float16 re-ranking copy of an HNSW one.
        self._flat_dtype = (np.float32 if is_poincare else np.float16) if self.rescore else _DTYPES[dtype]
        self._flat_vecs = np.zeros((0, self.ndim), dtype=self._flat_dtype)
        self._n = 0
        self._pos: dict[int, int] | None = None  # flat: key -> row, built lazily
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None  # flat: (sorted keys, their rows), lazily
        if not self.exact:
            self._index = self._new_index()

    def _new_index(self) -> GraphIndex:
        return make_graph(self.index, ndim=self.ndim, metric=self.graph_metric, dtype=self.dtype,
                          connectivity=self.connectivity, expansion_add=self.expansion_add,
                          expansion_search=self._expansion_search)

    def _reading(self) -> Any:
        """The lock for a graph search: shared where the backend searches safely from several threads at
        once, exclusive otherwise."""
        parallel = self._index is not None and self._index.parallel_search
        return self._lock.shared() if parallel else self._lock

    # ------------------------------------------------------------------ basic properties
    @property
    def expansion_search(self) -> int:
        return self._expansion_search

    @expansion_search.setter
    def expansion_search(self, value: int) -> None:
        with self._lock:
            self._expansion_search = int(value)
            if self._index is not None:
                self._index.expansion_search = int(value)

    def __len__(self) -> int:
        with self._reading():
            return self._n if self.exact else len(self._index)

    def __repr__(self) -> str:
        kind = "exact" if self.exact else f"hnsw {self.index} M={self.connectivity}"
        ro = ", read-only" if self.readonly else ""
        return f"Gallery({len(self)} x {self.ndim}, {self.metric}, {self.dtype}, {kind}{ro})"

    def keys(self) -> np.ndarray:
        """All keys (uint64), in no particular order for HNSW galleries, insertion order for exact ones."""
        with self._reading():
            if self.exact:
                return self._flat_keys[: self._n].copy()
            return self._index.keys()

    def _flat_pos(self) -> dict[int, int]:
        if self._pos is None:
            self._pos = {int(k): i for i, k in enumerate(self._flat_keys[: self._n])}
        return self._pos

    def contains(self, keys: int | Iterable[int]) -> bool | np.ndarray:
        """Whether each key is in the gallery (a bool for one key, a bool array for several)."""
        one = np.ndim(keys) == 0
        arr = np.atleast_1d(np.asarray(keys, dtype=np.uint64))
        with self._reading():
            if self.exact:
                pos = self._flat_pos()
                res = np.array([int(k) in pos for k in arr], dtype=bool)
            else:
                res = self._index.contains(arr)
        return bool(res[0]) if one else res

    __contains__ = contains

    def _check_writable(self) -> None:
        if self.readonly:
            raise PermissionError("this gallery is a read-only view; open it with Gallery.load(path) to modify it")

    # ------------------------------------------------------------------ mutation
    def add(
        self,
        keys: int | Sequence[int] | np.ndarray | None,
        vectors: np.ndarray,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> np.ndarray:
        """Insert vectors ``[N, ndim]`` under new uint64 ``keys`` (``None``: ``max key + 1`` onwards) with
        optional metadata dicts (JSON-able). Keys already present, repeated keys and :data:`MISSING_KEY` are
        refused (``ValueError``, nothing inserted). Returns the keys."""
        self._check_writable()
        vecs = np.asarray(vectors)
        if vecs.ndim == 1:
            vecs = vecs[None]
        if vecs.ndim != 2 or vecs.shape[1] != self.ndim:
            raise ValueError(f"vectors must be [N, {self.ndim}], got {list(vecs.shape)}")
        if not np.issubdtype(vecs.dtype, np.number):
            raise ValueError("vectors must be numeric")
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            vecs = np.ascontiguousarray(vecs, dtype=np.float32)
        check_vectors(vecs, zero_ok=self.metric in ("l2sq", "poincare"))
        vecs = self._prepare(vecs)
        n = vecs.shape[0]
        if metadata is not None:
            metadata = list(metadata)
            if len(metadata) != n:
                raise ValueError(f"got {len(metadata)} metadata entries for {n} vectors")
        else:
            metadata = [None] * n
        with self._lock:
            if keys is None:
                existing = self.keys()
                start = int(existing.max()) + 1 if existing.size else 0
                k = np.arange(start, start + n, dtype=np.uint64)
            else:
                k = as_keys(keys)
            if k.shape != (n,):
                raise ValueError(f"got {k.size} keys for {n} vectors")
            if n == 0:
                return k
            if np.any(k == MISSING_KEY):
                raise ValueError("key 2**64-1 is reserved (it pads short result rows)")
            if np.unique(k).size != n:
                raise ValueError("keys repeat within this call")
            present = np.atleast_1d(self.contains(k))
            if present.any():
                dup = k[present][:5].tolist()
                raise ValueError(f"{int(present.sum())} key(s) already in the gallery (e.g. {dup}); remove them first")
            if self.exact:
                self._flat_append(k, vecs)
            else:
                self._graph_add(k, vecs)
                if self.rescore:
                    self._flat_append(k, vecs)
            try:
                self._meta.add(k, metadata)
            except Exception:
                self._drop(k)
                raise
        return k

    def _graph_add(self, keys: np.ndarray, vecs: np.ndarray) -> None:
        """Insert into the HNSW graph: one thread while the graph holds fewer than :data:`SERIAL_ADD_BELOW`
        items, ``self.threads`` after that. Concurrent inserts into a small graph leave it with wrong links
        (usearch 2.26: 60 items in 8 dimensions, 2 threads, up to half of all top-10 answers wrong in 1 of 3
        builds; none with one thread); at tens of thousands of items the difference is within noise."""
        serial = max(0, min(len(keys), SERIAL_ADD_BELOW - len(self._index))) if self.threads != 1 else 0
        if serial:
            self._index.add(keys[:serial], vecs[:serial], 1)
        if serial < len(keys):
            self._index.add(keys[serial:], vecs[serial:], self.threads)

    def _prepare(self, v: np.ndarray) -> np.ndarray:
        """cos galleries store and search unit vectors: same distances, and i8 / f16 quantise them well.
        poincare galleries refuse points outside their ball."""
        if self.metric == "poincare":
            poincare.check_in_ball(v, self.curvature)
            return v
        if self.metric != "cos":
            return v
        norm = np.linalg.norm(v, axis=1, keepdims=True)
        return (v / np.where(norm > 0, norm, 1.0)).astype(np.float32)

    def _flat_append(self, k: np.ndarray, vecs: np.ndarray) -> None:
        need = self._n + len(k)
        if need > self._flat_keys.shape[0] or not self._flat_vecs.flags.writeable:
            cap = max(need, 2 * self._flat_keys.shape[0], 1024)
            nk = np.empty(cap, dtype=np.uint64)
            nv = np.empty((cap, self.ndim), dtype=self._flat_dtype)
            nk[: self._n] = self._flat_keys[: self._n]
            nv[: self._n] = self._flat_vecs[: self._n]
            self._flat_keys, self._flat_vecs = nk, nv
        self._flat_keys[self._n : need] = k
        self._flat_vecs[self._n : need] = vecs.astype(self._flat_dtype)
        self._sorted = None
        if self._pos is not None:
            for i, key in enumerate(k):
                self._pos[int(key)] = self._n + i
        self._n = need

    def _drop_flat(self, k: np.ndarray) -> int:
        rows = self._flat_rows(k)
        rows = rows[rows >= 0]
        if not rows.size:
            return 0
        keep = np.ones(self._n, dtype=bool)
        keep[rows] = False
        self._flat_keys = self._flat_keys[: self._n][keep].copy()
        self._flat_vecs = self._flat_vecs[: self._n][keep].copy()
        self._n = int(keep.sum())
        self._pos = None
        self._sorted = None
        return int(rows.size)

    def _flat_rows(self, keys: np.ndarray) -> np.ndarray:
        """Rows of ``keys`` in the flat matrix (int64, ``-1`` for absent keys); call under the lock."""
        if self._sorted is None:
            order = np.argsort(self._flat_keys[: self._n], kind="stable")
            self._sorted = (np.asarray(self._flat_keys[: self._n])[order], order)
        skeys, order = self._sorted
        keys = np.asarray(keys, dtype=np.uint64)
        if skeys.size == 0:
            return np.full(keys.shape, -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(skeys, keys), skeys.size - 1)
        return np.where(skeys[at] == keys, order[at], -1).astype(np.int64)

    def _drop(self, k: np.ndarray) -> int:
        if self.exact:
            return self._drop_flat(k)
        present = np.atleast_1d(self.contains(k))
        if present.any():
            self._index.remove(k[present])
        if self.rescore:
            self._drop_flat(k)
        return int(present.sum())

    def remove(self, keys: int | Sequence[int] | np.ndarray) -> int:
        """Remove keys (missing ones are ignored); returns how many were removed."""
        self._check_writable()
        k = np.unique(as_keys(keys))
        with self._lock:
            n = self._drop(k)
            self._meta.remove(k)
        return n

    # ------------------------------------------------------------------ lookup
    def get_metadata(self, keys: int | Sequence[int] | np.ndarray) -> list[dict[str, Any] | None]:
        """Metadata dicts for keys (``None`` for unknown keys and for :data:`MISSING_KEY`)."""
        k = as_keys(keys)
        with self._lock:
            try:
                return self._meta.get(k)
            except sqlite3.DatabaseError as e:
                raise damaged(self.path or "(in memory)", f"{META_FILE}: {one_line(e)}") from None

    def get_vectors(self, keys: Sequence[int] | np.ndarray) -> np.ndarray:
        """Stored vectors ``[n, ndim]`` as float32 (dequantised for f16 / i8, from the float16 re-ranking
        copy when the gallery keeps one; unit length for ``cos``); ``KeyError`` for unknown keys."""
        k = as_keys(keys)
        with self._lock:
            if self.exact or self.rescore:
                rows = self._flat_rows(k)
                if np.any(rows < 0):
                    raise KeyError(f"key {int(k[np.flatnonzero(rows < 0)[0]])} not in the gallery")
                return self._flat_vecs[rows].astype(np.float32)
            if k.size == 0:
                return np.zeros((0, self.ndim), dtype=np.float32)
            out, found = self._index.get(k)
        if not found.all():
            raise KeyError(f"key {int(k[np.flatnonzero(~found)[0]])} not in the gallery")
        return out

    def match(self, where: Mapping[str, Any]) -> np.ndarray:
        """Sorted uint64 keys whose metadata satisfies ``where`` (see the module docstring)."""
        with self._lock:
            try:
                return self._meta.match(where)
            except sqlite3.DatabaseError as e:
                raise damaged(self.path or "(in memory)", f"{META_FILE}: {one_line(e)}") from None

    # ------------------------------------------------------------------ search
    def check_model(self, model_fingerprint: str | None) -> None:
        """Raise :class:`ModelMismatchError` when both fingerprints are known and differ."""
        if model_fingerprint is None or self.model_fingerprint is None:
            return
        if model_fingerprint != self.model_fingerprint:
            name = self.model_info.get("model_name", "another model")
            raise ModelMismatchError(
                f"these queries were embedded by model {model_fingerprint[:12]}, but the gallery was built with "
                f"{name} ({self.model_fingerprint[:12]}); embed the queries with the gallery's model "
                "or rebuild the gallery"
            )

    def search(
        self,
        vectors: np.ndarray,
        k: int = 10,
        where: Mapping[str, Any] | None = None,
        *,
        model_fingerprint: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` neighbours of each query: ``(keys uint64 [Q, k], distances float32 [Q, k])``, best first.

        A single vector ``[D]`` is treated as ``[1, D]``. Short rows are padded with :data:`MISSING_KEY` and
        ``+inf``. ``model_fingerprint``: the fingerprint of the model that embedded the queries
        (``Embedder.model_fingerprint``); a mismatch with the gallery's raises :class:`ModelMismatchError`.
        ``1 <= k <= MAX_K`` (100,000); the result has ``min(k, len(self))`` columns. Queries with NaN or inf
        are refused (``ValueError``).
        """
        self.check_model(model_fingerprint)
        q = np.asarray(vectors)
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or q.shape[1] != self.ndim:
            raise ValueError(f"query vectors must be [Q, {self.ndim}], got {list(q.shape)}")
        k = int(k)
        if k < 1:
            raise ValueError("k must be >= 1")
        if k > MAX_K:
            raise ValueError(f"k = {k:,} is too large: k must be at most {MAX_K:,} (the result has "
                             "min(k, gallery size) columns)")
        q = np.ascontiguousarray(q, dtype=np.float32)
        finite = np.isfinite(q).all(axis=1)
        if not finite.all():
            i = int(np.flatnonzero(~finite)[0])
            raise ValueError(f"query vector {i} contains NaN or inf values; search with finite vectors "
                             f"({int((~finite).sum())} of {len(q)} rows are not)")
        q = self._prepare(q)
        k = min(k, len(self))
        nq = q.shape[0]
        out_k = np.full((nq, k), MISSING_KEY, dtype=np.uint64)
        out_d = np.full((nq, k), np.inf, dtype=np.float32)
        if nq == 0 or len(self) == 0:
            return out_k, out_d
        if where:
            match = self.match(where)
            if match.size == 0:
                return out_k, out_d
            if self.exact or match.size <= self.filter_exact_limit:
                self._exact_subset(q, k, match, out_k, out_d, np.arange(nq))
            else:
                self._widened(q, k, match, out_k, out_d)
            return self._checked(out_k, out_d)
        if self.exact:
            with self._lock:
                keys, vecs = self._flat_keys[: self._n], self._flat_vecs[: self._n]
            self._brute(q, k, keys, vecs, out_k, out_d, np.arange(nq))
        elif self.rescore:
            with self._reading():
                cand = min(len(self._index), k * self.rescore_oversample)
                rk, _, counts = self._index.search(q, cand, self.threads)
            valid = np.arange(rk.shape[1])[None, :] < counts[:, None]
            rk = np.where(valid, rk, MISSING_KEY).astype(np.uint64)
            self._rerank_keys(q, rk, out_k, out_d, np.arange(nq))
        else:
            with self._reading():
                found = self._index.search(q, k, self.threads)
            _fill(out_k, out_d, np.arange(nq), *found)
        return self._checked(out_k, out_d)

    def _checked(self, keys: np.ndarray, dist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Refuse results with NaN distances: finite queries on intact vectors never give one."""
        if np.isnan(dist).any():
            raise damaged(self.path or "(in memory)", "the index returned NaN distances for finite queries; "
                          "check it with tki info --verify")
        return keys, dist

    def _rerank_keys(self, q: np.ndarray, cand: np.ndarray, out_k: np.ndarray, out_d: np.ndarray,
                     rows: np.ndarray) -> None:
        """Re-rank candidate keys ``cand[i]`` of query ``q[rows[i]]`` on the float16 copy, in query chunks."""
        step = max(1, (1 << 22) // max(1, cand.shape[1] * self.ndim))  # ~16 MB of float32 per chunk
        for s in range(0, len(rows), step):
            ck = cand[s : s + step]
            with self._lock:
                vecs, ok = self._gather(ck)
            self._rerank(q, ck, vecs, ok, out_k, out_d, rows[s : s + step])

    def _gather(self, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Float16 copies ``[Q, m, D]`` of candidate keys ``[Q, m]`` and which exist; call under the lock."""
        rows = self._flat_rows(cand.reshape(-1)).reshape(cand.shape)
        ok = (rows >= 0) & (cand != MISSING_KEY)
        vecs = self._flat_vecs[np.where(ok, rows, 0)] if self._n else np.zeros((*cand.shape, self.ndim), np.float16)
        return vecs, ok

    def _rerank(self, q: np.ndarray, cand: np.ndarray, vecs: np.ndarray, ok: np.ndarray,
                out_k: np.ndarray, out_d: np.ndarray, rows: np.ndarray) -> None:
        """Exact distances (float32) of the candidates ``cand[i]`` to ``q[rows[i]]``; top k into the outputs."""
        k = out_k.shape[1]
        qq = q[rows].astype(np.float32)
        v = vecs.astype(np.float32)
        dot = np.einsum("qd,qmd->qm", qq, v)
        if self.metric == "cos":
            qn = np.linalg.norm(qq, axis=1)[:, None]
            vn = np.linalg.norm(v, axis=2)
            den = qn * vn
            dist = 1.0 - np.divide(dot, den, out=np.zeros_like(dot), where=den > 0)
        elif self.metric == "ip":
            dist = 1.0 - dot
        elif self.metric == "poincare":
            dist = poincare.distance_rows(qq, v, self.curvature)
        else:
            dist = np.sum((v - qq[:, None, :]) ** 2, axis=2)
        dist = np.where(ok, dist, np.inf).astype(np.float32)
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]
        m = order.shape[1]
        top_d = np.take_along_axis(dist, order, 1)
        top_k = np.where(np.isfinite(top_d), np.take_along_axis(cand, order, 1), MISSING_KEY)
        out_k[rows, :m] = top_k
        out_d[rows, :m] = top_d

    def _brute(self, q: np.ndarray, k: int, keys: np.ndarray, vecs: np.ndarray,
               out_k: np.ndarray, out_d: np.ndarray, rows: np.ndarray) -> None:
        exact_search = usearch_index().search

        if keys.size == 0:
            return
        qq = q[rows]
        if self.metric == "poincare":
            self._brute_poincare(qq, k, keys, vecs, out_k, out_d, rows)
            return
        if vecs.dtype != np.float32 and vecs.dtype != qq.dtype:
            qq = qq.astype(vecs.dtype)
        res = exact_search(vecs, qq, min(k, keys.size), self.metric, exact=True, threads=self.threads)
        pos, dist, counts = _unpack(res, len(rows))
        pos = pos.astype(np.int64)
        valid = np.arange(pos.shape[1])[None, :] < counts[:, None]
        mapped = np.where(valid, keys[np.clip(pos, 0, keys.size - 1)], MISSING_KEY)
        _fill(out_k, out_d, rows, mapped, dist, counts)

    def _brute_poincare(self, qq: np.ndarray, k: int, keys: np.ndarray, vecs: np.ndarray,
                        out_k: np.ndarray, out_d: np.ndarray, rows: np.ndarray) -> None:
        """Exact Poincaré top ``k`` of queries ``qq`` over ``(keys, vecs)``, ties by position (stable sort)."""
        m = min(k, keys.size)
        step = max(1, (1 << 23) // max(1, keys.size))  # ~64 MB of float64 distances per chunk
        for s in range(0, len(rows), step):
            dist = poincare.distance(qq[s : s + step], vecs, self.curvature)
            order = np.argsort(dist, axis=1, kind="stable")[:, :m]
            out_k[rows[s : s + step], :m] = keys[order]
            out_d[rows[s : s + step], :m] = np.take_along_axis(dist, order, 1).astype(np.float32)

    def _exact_subset(self, q: np.ndarray, k: int, match: np.ndarray,
                      out_k: np.ndarray, out_d: np.ndarray, rows: np.ndarray) -> None:
        if self.exact or self.rescore:
            with self._lock:
                idx = self._flat_rows(match)
                idx = idx[idx >= 0]
                keys, vecs = self._flat_keys[idx], self._flat_vecs[idx]
            if self.rescore:  # distances in float32 from the float16 copy, as when re-ranking
                vecs = np.ascontiguousarray(vecs, dtype=np.float32)
        else:
            with self._lock:
                got, ok = self._index.get(match)
            keys = match[ok]
            vecs = np.ascontiguousarray(got[ok], dtype=np.float32)
        self._brute(q, k, keys, vecs, out_k, out_d, rows)

    def _widened(self, q: np.ndarray, k: int, match: np.ndarray, out_k: np.ndarray, out_d: np.ndarray) -> None:
        """Broad filter on an HNSW gallery: over-fetch, keep matching hits, widen, fall back to exact.

        A query is settled when its k-th matching hit sits in the first half of the fetched candidates (the
        part of an HNSW result list that is reliable) or when every matching item was found. Otherwise the
        candidate count grows x4 up to ``max(4 * initial, 2048)``; queries still unsettled (a filter that
        selects items far from them) are computed exactly over the matching items.
        """
        total = len(self)
        initial = min(total, int(math.ceil(k * total / match.size * FILTER_OVERFETCH)) + k)
        cap = min(total, max(4 * initial, 2048))
        cand = initial
        pending = np.arange(q.shape[0])
        while pending.size:
            with self._reading():
                rk, rd, counts = self._index.search(q[pending], cand, self.threads)
            ok = np.isin(rk, match) & (np.arange(rk.shape[1])[None, :] < counts[:, None])
            short = []
            keep = k * self.rescore_oversample if self.rescore else k
            picked_rows, picked = [], []
            for j, row in enumerate(pending):
                sel = np.flatnonzero(ok[j])
                settled = (sel.size >= k and sel[k - 1] < max(k, cand // 2)) or sel.size >= match.size
                if not settled:
                    short.append(row)
                    continue
                sel = sel[:keep]
                if self.rescore:
                    picked_rows.append(row)
                    picked.append(np.concatenate([rk[j, sel], np.full(keep - sel.size, MISSING_KEY, np.uint64)]))
                    continue
                out_k[row, : sel.size] = rk[j, sel]
                out_d[row, : sel.size] = rd[j, sel]
            if picked:
                self._rerank_keys(q, np.stack(picked).astype(np.uint64), out_k, out_d,
                                  np.asarray(picked_rows, dtype=np.int64))
            pending = np.asarray(short, dtype=np.int64)
            if pending.size and cand >= cap:
                self._exact_subset(q, k, match, out_k, out_d, pending)
                return
            cand = min(cap, cand * 4)

    def exact_neighbours(self, queries: np.ndarray, k: int, *, exclude: np.ndarray | None = None,
                         chunk: int = 65_536) -> np.ndarray:
        """Exact top-``k`` keys ``[Q, k]`` (uint64, best first) of ``queries`` among the stored vectors (as
        stored: dequantised f16 / i8, or the float16 re-ranking copy), by brute force
        (:func:`~tki_sdk.runtime.index.tuning.exact_topk`); ``exclude[i]`` (a key) is left out of query ``i``'s
        answer. Queries are normalised for ``cos`` galleries, as search does."""
        keys = np.sort(self.keys())
        chunks = ((keys[s : s + chunk], self.get_vectors(keys[s : s + chunk])) for s in range(0, keys.size, chunk))
        return exact_topk(queries, chunks, self.metric, k, exclude)

    def _search_at(self, queries: np.ndarray, k: int, expansion_search: int) -> np.ndarray:
        """:class:`~tki_sdk.runtime.index.tuning.SearchAt` over this gallery (sets ``expansion_search``)."""
        self.expansion_search = expansion_search
        return self.search(queries, k)[0]

    def tune(self, target_recall: float = IndexConfig.target_recall, queries: np.ndarray | None = None, *,
             sample: int = 500, k: int = 10, candidates: Sequence[int] = DEFAULT_CANDIDATES, seed: int = 0,
             truth: np.ndarray | None = None, truth_seconds: float = 0.0,
             method: str | None = None) -> TuningResult:
        """Choose ``expansion_search`` for ``target_recall`` (recall@``k``) and keep it (``expansion_search`` and
        the ``tuned`` record of ``gallery.json``). Returns the :class:`~tki_sdk.runtime.index.tuning.TuningResult`.

        ``queries``: held-out query vectors; without them ``sample`` stored vectors are searched
        leave-one-out (their own key dropped from result and reference: slightly optimistic, since each sits in
        the graph). ``truth``: their exact top-``k`` keys when known (e.g. from float32 vectors before
        quantisation), with ``truth_seconds`` the time its computation took (a tuning's ``seconds`` count its
        reference and its sweep); else brute force over the stored vectors. The sweep is
        :func:`~tki_sdk.runtime.index.tuning.choose_expansion_search`. Exact galleries need no tuning
        (``ValueError``).
        """
        if self.exact:
            raise ValueError("exact galleries are searched by brute force; there is nothing to tune")
        if len(self) < 2:
            raise ValueError("tuning needs a gallery of at least 2 items")
        t0 = time.perf_counter()
        own = None
        if queries is None:
            keys = self.keys()
            rng = np.random.default_rng(seed)
            own = np.sort(rng.choice(keys, size=min(int(sample), keys.size), replace=False)).astype(np.uint64)
            q = self.get_vectors(own)
            method = method or "leave-one-out"
        else:
            q = np.asarray(queries, dtype=np.float32)
            if q.ndim != 2 or q.shape[1] != self.ndim or q.shape[0] < 1:
                raise ValueError(f"queries must be [Q, {self.ndim}] with Q >= 1")
            method = method or "given"
        k = min(int(k), len(self) - (own is not None))
        if truth is None:
            truth = self.exact_neighbours(q, k, exclude=own)
        result = choose_expansion_search(self._search_at, q, truth, k, target_recall=float(target_recall),
                                         candidates=candidates, own=own, connectivity=self.connectivity,
                                         method=method)
        result = dataclasses.replace(result, seconds=time.perf_counter() - t0 + float(truth_seconds))
        self.expansion_search = result.expansion_search
        self.tuned = result.record()
        return result

    # ------------------------------------------------------------------ persistence
    def manifest(self) -> GalleryManifest:
        """What ``gallery.json`` records for this gallery now."""
        return GalleryManifest(
            ndim=self.ndim, metric=self.metric, dtype=self.dtype, exact=self.exact, count=len(self),
            connectivity=self.connectivity, expansion_add=self.expansion_add,
            expansion_search=self.expansion_search, rescore=self.rescore,
            index=None if self.exact else {"backend": self.index, "metric": self.graph_metric},
            rescore_oversample=self.rescore_oversample, curvature=self.curvature,
            model_fingerprint=self.model_fingerprint,
            model=self.model_info, tuned=self.tuned, saved=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )

    def info(self) -> dict[str, Any]:
        """What ``gallery.json`` records, as a dict."""
        return self.manifest().to_dict()

    def save(self, path: str | os.PathLike, *, overwrite: bool = True, expect: str | None = None) -> Path:
        """Write the gallery to folder ``path`` atomically (:func:`~tki_sdk.runtime.index.store.save_version`).
        Returns ``path``.

        The version is written beside the live one without a lock; the swap and cleanup run under an exclusive
        ``flock`` on ``path/.lock``, so concurrent saves to one folder (threads or processes) serialise there:
        the last one wins and ``CURRENT`` always names a complete version; loads wait at most for a swap. ``overwrite=False`` makes creation exclusive: when ``path`` is already a gallery
        (also one another process created while this one was working) the save raises
        :class:`~tki_sdk.runtime.index.store.GalleryExistsError` (a ``FileExistsError``) and replaces
        nothing. A failed write (a full disk) raises
        :class:`~tki_sdk.runtime.index.store.GalleryWriteError` (an ``OSError``) and keeps the live version.
        ``expect``: compare-and-swap on ``CURRENT`` (:func:`~tki_sdk.runtime.index.store.save_version`).
        """
        root = Path(path)

        def write(d: Path) -> None:
            with self._lock:
                self._write_version(d)

        save_version(root, write, overwrite=overwrite, expect=expect)
        self.path = root
        return root

    def _write_version(self, d: Path) -> None:

        if not self.exact:
            self._index.save(d)
            for name in self._index.files:
                fsync_file(d / name)
        if self.exact or self.rescore:
            np.save(d / KEYS_FILE, self._flat_keys[: self._n])
            np.save(d / VECTORS_FILE, self._flat_vecs[: self._n])
            fsync_file(d / KEYS_FILE)
            fsync_file(d / VECTORS_FILE)
        self._meta.backup_to(d / META_FILE)
        fsync_file(d / META_FILE)
        manifest = self.manifest()
        manifest.files = file_records(d)  # sizes and hashes of what was just written, gallery.json last
        manifest.save(d)

    @classmethod
    def load(cls, path: str | os.PathLike, *, threads: int = 0, verify: str = "auto") -> "Gallery":
        """Load a saved gallery into memory (modifiable). ``verify``: how the files are checked against
        ``gallery.json`` first (``"auto"``, ``"size"``, ``"sha256"``; see
        :data:`~tki_sdk.runtime.index.store.VERIFY_MODES`). A damaged gallery raises
        :class:`~tki_sdk.runtime.index.store.GalleryDamagedError`."""
        return cls._open(Path(path), view=False, threads=threads, verify=verify)

    @classmethod
    def view(cls, path: str | os.PathLike, *, threads: int = 0, verify: str = "auto") -> "Gallery":
        """Open a saved gallery memory-mapped and read-only (fast to open, shares pages between processes);
        ``verify`` as in :meth:`load`. An ``hnswlib`` graph cannot be mapped: it is read into memory (still
        read-only)."""
        return cls._open(Path(path), view=True, threads=threads, verify=verify)

    @staticmethod
    def read_info(path: str | os.PathLike) -> dict[str, Any]:
        """``gallery.json`` of the live version of the gallery at ``path``."""
        return GalleryManifest.load(read_current(Path(path))).to_dict()

    @classmethod
    def _open(cls, root: Path, view: bool, threads: int, verify: str = "auto") -> "Gallery":
        with live_version(root) as d:
            return cls._open_version(root, d, view, threads, verify)

    @classmethod
    def _open_version(cls, root: Path, d: Path, view: bool, threads: int, verify: str = "auto") -> "Gallery":
        try:
            info = GalleryManifest.load(d)
        except ContractError as e:
            reason = str(e).replace(f"; {GalleryManifest.FIX}", "")
            raise damaged(root, reason if MANIFEST_FILE in reason else f"{MANIFEST_FILE}: {reason}") from None
        checked = verify_files(root, d, info.files, verify)
        try:
            g = cls._read_version(root, d, info, view, threads)
        except _ReadError as e:
            raise damaged(root, f"{e.file} cannot be read ({e.reason})") from None
        except (ValueError, TypeError) as e:  # the manifest's values do not fit (e.g. an unknown metric)
            if isinstance(e, GalleryDamagedError):
                raise
            raise damaged(root, f"{MANIFEST_FILE}: {one_line(e)}") from None
        g.verified = checked
        return g

    @classmethod
    def _read_version(cls, root: Path, d: Path, info: GalleryManifest, view: bool, threads: int) -> "Gallery":
        g = cls(
            info.ndim,
            metric=info.metric,
            exact=info.exact,
            dtype=info.dtype,
            connectivity=info.connectivity,
            expansion_add=info.expansion_add,
            expansion_search=info.expansion_search,
            model_fingerprint=info.model_fingerprint,
            model_info=info.model,
            threads=threads,
            rescore=info.rescore,
            rescore_oversample=info.rescore_oversample,
            curvature=info.curvature,
            index=(info.index or {}).get("backend", LEGACY_BACKEND),
        )
        if not g.exact:  # the graph as it was built (saved before the record: usearch with the gallery's metric)
            built = (info.index or {}).get("metric") or legacy_graph_metric(g.metric)
            if built != g.graph_metric:
                g.graph_metric = str(built)
                g._index = g._new_index()
        if g.exact or g.rescore:
            mmap = "r" if view else None
            keys = _read(KEYS_FILE, lambda: np.load(d / KEYS_FILE, mmap_mode=mmap))
            vecs = _read(VECTORS_FILE, lambda: np.load(d / VECTORS_FILE, mmap_mode=mmap))
            if keys.ndim != 1 or keys.dtype != np.uint64:
                raise damaged(root, f"{KEYS_FILE} holds {keys.dtype} {list(keys.shape)}, not uint64 keys")
            if vecs.shape != (keys.shape[0], g.ndim):
                raise damaged(root, f"{keys.shape[0]} keys in {KEYS_FILE} but {VECTORS_FILE} is {list(vecs.shape)}")
            if not view:
                keys, vecs = np.array(keys, dtype=np.uint64), np.array(vecs)
            if vecs.dtype != g._flat_dtype:
                raise damaged(root, f"{VECTORS_FILE} holds {vecs.dtype}, expected {np.dtype(g._flat_dtype)}")
            g._flat_keys, g._flat_vecs, g._n = keys, vecs, int(keys.shape[0])
        if not g.exact:
            for name in g._index.files:
                if not (d / name).is_file():
                    raise damaged(root, f"{name} is missing")
            _read(g._index.files[0], lambda: g._index.load(d, view))
            g._index.expansion_search = g._expansion_search
        g._meta.close()
        if not (d / META_FILE).is_file():
            raise damaged(root, f"{META_FILE} is missing")
        g._meta = _read(META_FILE, lambda: MetadataStore.readonly(d / META_FILE) if view
                        else MetadataStore.copy_of(d / META_FILE))
        n_meta = _read(META_FILE, g._meta.count)
        if g.rescore and g._n != len(g):
            raise damaged(root, f"{g._index.files[0]} holds {len(g)} items, the re-ranking copy {g._n}")
        if len(g) != info.count:
            raise damaged(root, f"gallery.json says {info.count} items, the index holds {len(g)}")
        if n_meta != info.count:
            raise damaged(root, f"{META_FILE} holds {n_meta} items, gallery.json says {info.count}")
        g.tuned = info.tuned
        g.readonly = view
        g.path = root
        return g

    def describe(self) -> str:
        """Human-readable summary (for ``tki info``); metadata values are escaped (:func:`printable`), so
        none can print control characters or extra lines."""
        kind = "exact (brute force)" if self.exact else (
            f"HNSW {self.index} (M={self.connectivity}, ef_add={self.expansion_add}, ef_search={self.expansion_search})"
            + (f", re-ranked on a float16 copy (x{self.rescore_oversample} candidates)" if self.rescore else "")
        )
        lines = [
            f"gallery: {printable(self.path)}" if self.path else "gallery (in memory)",
            f"  items:        {len(self):,}",
            f"  vectors:      {self.ndim}-d {self.dtype}, metric {self.metric}",
            f"  index:        {kind}",
            *([f"  tuned:        recall@{t.get('k')} ~ {t.get('recall_estimate')} (target {t.get('target_recall')}, "
               f"{t.get('queries')} {t.get('method')} queries) at ef_search={t.get('expansion_search')}"]
              if (t := self.tuned) else []),
            f"  model:        {printable(self.model_info.get('model_name', '?'))} "
            f"({printable((self.model_fingerprint or 'unknown')[:12])})",
        ]
        checks = {"sha256": "sha256 and size of every file verified",
                  "size": "sizes of every file verified (sha256 skipped; tki info --verify checks them)",
                  "none": "not recorded (saved before checksums)"}
        if self.verified in checks:
            lines.append(f"  integrity:    {checks[self.verified]}")
        for field in ("domain", "class"):
            with self._lock:
                try:
                    rows = self._meta.conn.execute(
                        "SELECT value, COUNT(*) FROM attrs WHERE name = ? GROUP BY value ORDER BY value", (field,)
                    ).fetchall()
                except sqlite3.DatabaseError as e:
                    raise damaged(self.path or "(in memory)", f"{META_FILE}: {one_line(e)}") from None
            if rows:
                shown = ", ".join(f"{printable(v)} ({c})" for v, c in rows[:12])
                more = f", ... {len(rows) - 12} more" if len(rows) > 12 else ""
                lines.append(f"  {field + ':':<13} {shown}{more}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ building from images


def as_keys(keys: int | Sequence[int] | np.ndarray) -> np.ndarray:
    """Keys as a flat uint64 array, exactly: a numpy array of integers is cast (negative values refused); a
    Python int or sequence of ints is converted one by one, so a list mixing a key above ``2**63`` with a
    small one is not widened to float64 and rounded, as ``np.asarray`` would. Anything else: ``ValueError``."""
    if isinstance(keys, np.ndarray) or isinstance(keys, np.generic):
        k = np.atleast_1d(np.asarray(keys))
        if k.dtype.kind == "i" and np.any(k < 0):
            raise ValueError("keys must be non-negative integers (uint64)")
        if k.dtype.kind not in "iu":
            raise ValueError(f"keys must be integers, got {k.dtype}")
        return k.astype(np.uint64).reshape(-1)
    items = [keys] if isinstance(keys, int) else list(keys)
    out = np.empty(len(items), dtype=np.uint64)
    for i, v in enumerate(items):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"keys must be integers, got {type(v).__name__}")
        v = int(v)
        if not 0 <= v < 2**64:
            raise ValueError("keys must be non-negative integers (uint64)")
        out[i] = v
    return out


class _ReadError(Exception):
    """Reading one file of a version failed (wrapped by :meth:`Gallery._open_version` into one line)."""

    def __init__(self, file: str, reason: str) -> None:
        super().__init__(f"{file}: {reason}")
        self.file, self.reason = file, reason


def _read(file: str, fn: Any) -> Any:
    """``fn()``, with any reader error (usearch, numpy, sqlite, OS) as :class:`_ReadError` naming ``file``."""
    try:
        return fn()
    except GalleryDamagedError:
        raise
    except (OSError, ValueError, RuntimeError, sqlite3.Error, KeyError, EOFError, TypeError, MemoryError) as e:
        raise _ReadError(file, one_line(e)) from None


def _unpack(res: Any, nq: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """usearch ``Matches`` (one query) or ``BatchMatches`` -> keys [nq, m], distances [nq, m], counts [nq]."""
    if hasattr(res, "counts"):
        return (np.asarray(res.keys).reshape(nq, -1), np.asarray(res.distances).reshape(nq, -1),
                np.asarray(res.counts).reshape(-1))
    keys = np.asarray(res.keys).reshape(1, -1)
    return keys, np.asarray(res.distances).reshape(1, -1), np.array([keys.shape[1]])


def _fill(out_k: np.ndarray, out_d: np.ndarray, rows: np.ndarray, keys: np.ndarray, dists: np.ndarray,
          counts: np.ndarray) -> None:
    """Copy usearch results (valid up to ``counts``) into the padded outputs at ``rows``."""
    k = out_k.shape[1]
    m = min(k, keys.shape[1])
    valid = np.arange(m)[None, :] < np.minimum(counts, m)[:, None]
    out_k[rows, :m] = np.where(valid, keys[:, :m], MISSING_KEY)
    out_d[rows, :m] = np.where(valid, dists[:, :m], np.inf)


def first_bad_vector(vecs: np.ndarray, *, zero_ok: bool = False) -> tuple[int, str, int] | None:
    """``(row, what, count)`` of the first float32 vector of ``vecs [N, D]`` a gallery must refuse, or ``None``:
    NaN or infinity, a float32 norm ``sqrt(sum(v * v))`` that overflows (e.g. ``2e20``: normalised it became
    all zeros), or -- unless ``zero_ok`` (l2sq, poincare: the origin is a point) -- a norm of 0 (``0``, or
    ``1e-300`` / ``1e-30`` that underflow in float32): such a vector has no direction to search by."""
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        finite = np.isfinite(vecs).all(axis=1)
        norm = np.sqrt(np.einsum("ij,ij->i", vecs, vecs, dtype=np.float32)) if vecs.size else np.ones(len(vecs))
    bad = ~finite | ~np.isfinite(norm)
    if not zero_ok:
        bad |= norm <= 0
    if not np.any(bad):
        return None
    i = int(np.flatnonzero(bad)[0])
    what = ("contains NaN or infinity" if not finite[i] else "has a norm too large for float32"
            if not np.isfinite(norm[i]) else "has zero norm in float32")
    return i, what, int(bad.sum())


def check_vectors(vecs: np.ndarray, *, zero_ok: bool = False) -> None:
    """Refuse (``ValueError``, one line naming the first bad row) what :func:`first_bad_vector` finds."""
    bad = first_bad_vector(vecs, zero_ok=zero_ok)
    if bad is not None:
        raise ValueError(f"vectors row {bad[0]} {bad[1]} ({bad[2]} such row(s)); nothing was added: "
                         "pass finite vectors with a non-zero norm that float32 can hold")
