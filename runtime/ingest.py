"""Folder ingest: image files -> embeddings -> gallery items, the one path ``tki embed`` and
``Gallery.from_folder`` share.

- :func:`scan_image_folder` lists a folder through the common walker
  (:func:`tki_sdk.common.imagefolders.walk_images`) and gives each file its metadata;
- :func:`gallery_options` is what a gallery built for an embedder records (width, metric, fingerprint,
  model summary);
- :func:`embed_into` embeds the files and adds every readable one to a gallery, keyed by its position in
  the scanned list.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tki_sdk.common.imagefolders import SkippedEntry, walk_images

__all__ = ["scan_image_folder", "gallery_options", "model_info", "embed_into"]


def scan_image_folder(
    folder: str | os.PathLike, skipped: list[SkippedEntry] | None = None
) -> list[tuple[Path, dict[str, Any]]]:
    """Image files under ``folder`` (by suffix, hidden files skipped), sorted, with metadata.

    Metadata: ``path`` (absolute), ``rel`` (relative to ``folder``), and from the folders between:
    ``<domain>/<class>/<file>`` -> ``domain``, ``class``; ``<class>/<file>`` -> ``class``; deeper trees use
    the two innermost folders. Entries that are not regular files, and folders that cannot be listed, go to
    ``skipped`` with a reason (never opened).
    """
    out = []
    for f in walk_images(folder, skipped):
        meta: dict[str, Any] = {"path": str(f.path.resolve()), "rel": f.rel}
        if f.domain is not None:
            meta["domain"] = f.domain
        if f.class_name is not None:
            meta["class"] = f.class_name
        out.append((f.path, meta))
    return out


def model_info(embedder: Any) -> dict[str, Any]:
    """The model summary a gallery stores (``gallery.json``'s ``model``)."""
    md = embedder.metadata
    return {
        "model_name": md.model_name,
        "head": md.head,
        "output_space": md.output_space,
        "embedding_dim": md.embedding_dim,
        "precision": getattr(embedder, "precision", None),
        "model_dir": str(getattr(embedder, "model_dir", "")),
    }


def gallery_options(embedder: Any, **gallery_kwargs: Any) -> dict[str, Any]:
    """``Gallery(**options)`` for a gallery of ``embedder``'s embeddings: ``ndim``, ``metric`` (the export's,
    unless given), ``model_fingerprint`` and ``model_info``, plus ``gallery_kwargs``."""
    opts = dict(gallery_kwargs)
    opts.setdefault("metric", getattr(embedder.metadata, "metric", "cos") or "cos")
    if opts["metric"] == "poincare":
        opts.setdefault("curvature", embedder.metadata.curvature)
    return {"ndim": embedder.embedding_dim, "model_fingerprint": embedder.model_fingerprint,
            "model_info": model_info(embedder), **opts}


def embed_into(
    gallery: Any,
    files: Sequence[tuple[Path, dict[str, Any]]],
    embedder: Any,
    *,
    batch_size: int = 32,
    workers: int | None = None,
    progress: Any = False,
) -> Any:
    """Embed ``files`` (from :func:`scan_image_folder`) and add each readable one to ``gallery`` with key =
    its position in ``files``. Returns the ``EmbedResult`` (its ``errors`` name each skipped file)."""
    res = embedder.embed_images([p for p, _ in files], batch_size=batch_size, workers=workers, progress=progress)
    if len(res.indices):
        gallery.add(res.indices.astype(np.uint64), res.embeddings, [files[i][1] for i in res.indices])
    return res
