"""``gallery.json``: what a gallery version folder holds, read and written through one dataclass.

Layout (``format`` ``"tki-gallery"``, ``format_version`` 1)::

    {
      "format": "tki-gallery", "format_version": 1,
      "count": 24,                 # items in the index (checked against the index on load)
      "ndim": 512,                 # embedding width (tki.json's embedding_dim)
      "metric": "cos" | "ip" | "l2sq" | "poincare",
      "curvature": 1.0,            # only for metric poincare: c of the ball (curvature -c)
      "dtype": "f32" | "f16" | "i8",
      "exact": false,              # true: flat matrix searched by brute force
      "connectivity": 16, "expansion_add": 128, "expansion_search": 64,   # HNSW M, efConstruction, ef (IndexConfig)
      "rescore": true, "rescore_oversample": 4,                           # float16 re-ranking copy
      "index": {"backend": "usearch" | "hnswlib" | "faiss", "metric": "ip" | "cos" | "l2sq"},   # HNSW only: the graph's
                                   # backend and the metric it was built with (absent: usearch, the gallery's
                                   # metric; poincare: l2sq)
      "tuned": {"target_recall": 0.99, "recall_estimate": 0.994, "recall_lower_bound": 0.992,   # optional:
                "expansion_search": 96, "connectivity": 16, "k": 10, "queries": 500,      # what self-tuning
                "method": "held-out", "reached": true, "curve": [[16, 0.91], ...]},  # chose (absent: never tuned)
      "model_fingerprint": "<sha256>" | null,   # ModelMetadata.fingerprint() of the model that embedded it
      "model": {"model_name": ..., "head": ..., "output_space": ..., "embedding_dim": ..., "precision": ...,
                "model_dir": ...},
      "saved": "2026-11-30T00:17:43+0000",
      "files": {"index.usearch": {"bytes": 40960, "sha256": "<hex>"}, "meta.sqlite": {...}, ...}
    }

``files`` records the size and SHA-256 of every other file of the version folder, written after them;
loaders compare sizes (fast) or hashes (full) before reading. Optional: galleries saved before it carry
none and load unchecked.

Unknown keys are kept in ``extra`` and written back unchanged (forward compatibility within a major version).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tki_sdk.common.contract import ContractError, JsonContract, check_version, require
from tki_sdk.common.index_config import IndexConfig

__all__ = ["GalleryManifest", "GALLERY_FORMAT", "GALLERY_FORMAT_VERSION", "MANIFEST_FILE"]

GALLERY_FORMAT = "tki-gallery"
GALLERY_FORMAT_VERSION = 1
MANIFEST_FILE = "gallery.json"
_FIX = "the gallery is damaged: rebuild it with tki embed"


@dataclass
class GalleryManifest(JsonContract):
    """Parsed ``gallery.json`` (see the module docstring for each field)."""

    FILE = MANIFEST_FILE
    WHAT = "gallery manifest"
    FIX = _FIX

    ndim: int
    metric: str
    dtype: str
    exact: bool
    count: int = 0
    connectivity: int = IndexConfig.connectivity
    expansion_add: int = IndexConfig.expansion_add
    expansion_search: int = IndexConfig.expansion_search
    rescore: bool = False
    rescore_oversample: int = 4
    curvature: float | None = None
    index: dict[str, Any] | None = None
    model_fingerprint: str | None = None
    model: dict[str, Any] = field(default_factory=dict)
    tuned: dict[str, Any] | None = None
    saved: str | None = None
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    format: str = GALLERY_FORMAT
    format_version: int = GALLERY_FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = MANIFEST_FILE) -> "GalleryManifest":
        if not isinstance(d, dict):
            raise ContractError(f"{where} is not a JSON object; {_FIX}")
        if d.get("format") != GALLERY_FORMAT:
            raise ContractError(f"{where} is not a tki gallery manifest (format {d.get('format')!r}); {_FIX}")
        version = check_version(d.get("format_version", 1), GALLERY_FORMAT_VERSION, where)
        require(d, ("ndim", "metric", "dtype", "exact", "count"), where, _FIX)
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        try:
            m = cls(
                ndim=int(d["ndim"]), metric=str(d["metric"]), dtype=str(d["dtype"]), exact=bool(d["exact"]),
                count=int(d["count"]),
                connectivity=int(d.get("connectivity", IndexConfig.connectivity)),
                expansion_add=int(d.get("expansion_add", IndexConfig.expansion_add)),
                expansion_search=int(d.get("expansion_search", IndexConfig.expansion_search)),
                rescore=bool(d.get("rescore", False)),  # galleries saved before re-ranking carry no copy
                rescore_oversample=int(d.get("rescore_oversample", 4)),
                curvature=None if d.get("curvature") is None else float(d["curvature"]),
                index=_index(d.get("index"), where),
                model_fingerprint=d.get("model_fingerprint"),
                model=dict(d.get("model") or {}),
                tuned=dict(d["tuned"]) if isinstance(d.get("tuned"), dict) else None,
                saved=d.get("saved"),
                files=_files(d.get("files"), where),
                format_version=version,
                extra={k: v for k, v in d.items() if k not in known},
            )
        except (TypeError, ValueError) as e:
            raise ContractError(f"{where} has a field of the wrong type ({e}); {_FIX}") from None
        if m.ndim < 1 or m.count < 0:
            raise ContractError(f"{where}: ndim {m.ndim} / count {m.count} out of range; {_FIX}")
        return m

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not d["files"]:
            d.pop("files")  # a manifest built in memory before the files exist
        extra = d.pop("extra")
        if d["curvature"] is None:  # written only for poincare galleries (files before it had none)
            d.pop("curvature")
        if d["index"] is None:  # exact galleries, and galleries saved before backends
            del d["index"]
        if d["tuned"] is None:  # written only once a gallery has been tuned (older readers never see it)
            del d["tuned"]
        # the historical key order: format first
        return self.with_extra({"format": d.pop("format"), "format_version": d.pop("format_version"), **d}, extra)


def _index(value: Any, where: str) -> dict[str, Any] | None:
    """``index``: ``{"backend": str, "metric": str}``; absent in exact galleries and those saved before it."""
    if value is None:
        return None
    if not (isinstance(value, dict) and isinstance(value.get("backend"), str)
            and isinstance(value.get("metric", ""), str)):
        raise ContractError(f"{where}: 'index' is not {{backend, metric}}; {_FIX}")
    return dict(value)


def _files(value: Any, where: str) -> dict[str, dict[str, Any]]:
    """``files``: ``{name: {"bytes": int, "sha256": hex}}``; absent in galleries saved before checksums."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ContractError(f"{where}: 'files' is not an object; {_FIX}")
    out: dict[str, dict[str, Any]] = {}
    for name, rec in value.items():
        ok = (isinstance(name, str) and name and "/" not in name and not name.startswith(".")
              and isinstance(rec, dict) and isinstance(rec.get("bytes"), int) and rec["bytes"] >= 0
              and isinstance(rec.get("sha256"), str) and len(rec["sha256"]) == 64)
        if not ok:
            raise ContractError(f"{where}: 'files' entry {name!r} is malformed; {_FIX}")
        out[name] = {"bytes": int(rec["bytes"]), "sha256": str(rec["sha256"])}
    return out
