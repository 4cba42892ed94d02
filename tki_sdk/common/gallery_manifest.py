"""``gallery.json``: what a gallery version folder holds, read and written through one dataclass.

Layout (``format`` ``"tki-gallery"``, ``format_version`` 1)::

    {
      "format": "tki-gallery", "format_version": 1,
      "count": 24,                 # items in the index (checked against the index on load)
      "ndim": 512,                 # embedding width (tki.json's embedding_dim)
      "metric": "cos" | "ip" | "l2sq",
      "dtype": "f32" | "f16" | "i8",
      "exact": false,              # true: flat matrix searched by brute force
      "connectivity": 16, "expansion_add": 128, "expansion_search": 64,   # HNSW M, efConstruction, ef
      "rescore": true, "rescore_oversample": 4,                           # float16 re-ranking copy
      "tuned": {"target_recall": 0.99, "recall_estimate": 0.994, "recall_lower_bound": 0.992,   # optional:
                "expansion_search": 96, "connectivity": 16, "k": 10, "queries": 500,      # what self-tuning
                "method": "held-out", "reached": true, "curve": [[16, 0.91], ...]},  # chose (absent: never tuned)
      "model_fingerprint": "<sha256>" | null,   # ModelMetadata.fingerprint() of the model that embedded it
      "model": {"model_name": ..., "head": ..., "output_space": ..., "embedding_dim": ..., "precision": ...,
                "model_dir": ...},
      "saved": "2026-11-30T00:17:43+0000"
    }

Unknown keys are kept in ``extra`` and written back unchanged (forward compatibility within a major version).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .contract import ContractError, JsonContract, check_version, require

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
    connectivity: int = 16
    expansion_add: int = 128
    expansion_search: int = 64
    rescore: bool = False
    rescore_oversample: int = 4
    model_fingerprint: str | None = None
    model: dict[str, Any] = field(default_factory=dict)
    tuned: dict[str, Any] | None = None
    saved: str | None = None
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
                connectivity=int(d.get("connectivity", 16)),
                expansion_add=int(d.get("expansion_add", 128)),
                expansion_search=int(d.get("expansion_search", 64)),
                rescore=bool(d.get("rescore", False)),  # galleries saved before re-ranking carry no copy
                rescore_oversample=int(d.get("rescore_oversample", 4)),
                model_fingerprint=d.get("model_fingerprint"),
                model=dict(d.get("model") or {}),
                tuned=dict(d["tuned"]) if isinstance(d.get("tuned"), dict) else None,
                saved=d.get("saved"),
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
        extra = d.pop("extra")
        if d["tuned"] is None:  # written only once a gallery has been tuned (older readers never see it)
            del d["tuned"]
        # the historical key order: format first
        return self.with_extra({"format": d.pop("format"), "format_version": d.pop("format_version"), **d}, extra)
