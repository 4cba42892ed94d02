"""Folder ingest: image files -> keyed items -> embeddings -> gallery items, the one path ``tki embed`` and
``Gallery.from_folder`` share.

- :func:`item_key` gives an image file its gallery key, a hash of its path relative to the images root, so a
  file keeps its key from run to run (what incremental runs rely on);
- :class:`SourceFile` is one file to embed: key, path, labels and the signature that detects a change
  (size, modification time, optionally a SHA-256 of the content);
- :func:`scan_sources` lists a folder (through the common walker,
  :func:`tki_sdk.common.imagefolders.walk_images`) or a manifest into source files;
  :func:`scan_image_folder` is the same listing as ``(path, metadata)`` pairs;
- :func:`gallery_options` is what a gallery built for an embedder records (width, metric, fingerprint,
  model summary);
- :func:`embed_into` embeds the files and adds every readable one to a gallery under its path key (its
  metadata gains ``embedding_hash``, :func:`~tki_sdk.runtime.pipeline.shards.vector_hash` of the vector, as
  every item an embedding run indexes: incremental runs compare it to tell an unchanged item).

Key collisions: keys are 63-bit (:func:`item_key`), so two paths share one with probability about
``n^2 / 2^64`` (one in 18 million for a million files). Files are listed in sorted order of ``rel``; a file
whose key is already taken by an earlier file is not embedded and is reported as failed with the reason
``key collision with <rel>`` (rename either file), so no item is ever silently replaced by another.
"""
from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

import numpy as np

from tki_sdk.common.atomic import sha256_file
from tki_sdk.common.imagefolders import SkippedEntry, walk_images
from tki_sdk.runtime.index.gallery import Gallery
from tki_sdk.runtime.pipeline.protocols import EmbedderLike, EmbedResultLike, GalleryLike
from tki_sdk.runtime.pipeline.shards import vector_hash

__all__ = [
    "item_key", "SourceFile", "scan_sources", "read_manifest", "scan_image_folder",
    "gallery_options", "model_info", "embed_into",
]

#: Keys are the top 63 bits of BLAKE2b-64 of the UTF-8 relative path: below 2**63, so they are also valid
#: signed int64 values (SQLite, Arrow) and never the reserved ``2**64 - 1``.
KEY_BITS = 63


def item_key(rel: str) -> int:
    """The gallery key of the file at ``rel`` (POSIX path relative to the images root):
    ``int.from_bytes(blake2b(rel.encode("utf-8", "surrogateescape"), digest_size=8), "big") >> 1``."""
    digest = hashlib.blake2b(rel.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> (64 - KEY_BITS)


@dataclass(frozen=True)
class SourceFile:
    """One image file of a run: ``key`` (:func:`item_key` of ``rel``), ``path`` (absolute), ``rel``,
    ``domain`` / ``class_name`` labels, and its signature ``size``, ``mtime_ns`` and ``sha256`` (``None``
    unless hashing was asked for)."""

    key: int
    path: str
    rel: str
    domain: str | None
    class_name: str | None
    size: int
    mtime_ns: int
    sha256: str | None = None

    def signature(self, use_hash: bool) -> tuple[Any, ...]:
        """What must be equal for the file to count as unchanged: ``(size, sha256)`` with hashing (a copy
        that only touched modification times is unchanged), ``(size, mtime_ns)`` without."""
        return (self.size, self.sha256) if use_hash else (self.size, self.mtime_ns)

    def metadata(self) -> dict[str, Any]:
        """The gallery metadata of this item: ``path``, ``rel``, ``domain`` and ``class`` when known, and
        ``file`` = ``{size, mtime_ns[, sha256]}`` (the signature incremental runs compare)."""
        meta: dict[str, Any] = {"path": self.path, "rel": self.rel}
        if self.domain is not None:
            meta["domain"] = self.domain
        if self.class_name is not None:
            meta["class"] = self.class_name
        sig: dict[str, Any] = {"size": int(self.size), "mtime_ns": int(self.mtime_ns)}
        if self.sha256 is not None:
            sig["sha256"] = self.sha256
        meta["file"] = sig
        return meta


def stored_signature(meta: dict[str, Any] | None, use_hash: bool) -> tuple[Any, ...] | None:
    """The signature recorded in an item's gallery metadata (``None`` when it has none)."""
    sig = (meta or {}).get("file")
    if not isinstance(sig, dict):
        return None
    return (sig.get("size"), sig.get("sha256")) if use_hash else (sig.get("size"), sig.get("mtime_ns"))


def _labels(rel: str) -> tuple[str | None, str | None]:
    folders = PurePosixPath(rel).parts[:-1]
    if len(folders) >= 2:
        return folders[-2], folders[-1]
    if len(folders) == 1:
        return None, folders[0]
    return None, None


def _source(path: Path, rel: str, domain: str | None, class_name: str | None, use_hash: bool) -> SourceFile:
    st = os.stat(path)
    return SourceFile(
        key=item_key(rel), path=str(path.resolve()), rel=rel, domain=domain, class_name=class_name,
        size=int(st.st_size), mtime_ns=int(st.st_mtime_ns), sha256=sha256_file(path) if use_hash else None,
    )


def read_manifest(manifest: str | os.PathLike) -> list[str]:
    """Paths listed in a manifest: a CSV file with a ``path`` column (or one path per line without a header
    named ``path``), or a Parquet file with a ``path`` column."""
    p = Path(manifest)
    if p.suffix.lower() in (".parquet", ".pq"):
        from tki_sdk.runtime.pipeline.shards import import_pyarrow

        import_pyarrow()
        import pyarrow.parquet as pq

        table = pq.read_table(p, columns=["path"]) if "path" in pq.read_schema(p).names else None
        if table is None:
            raise ValueError(f"manifest {p} has no 'path' column")
        return [str(x) for x in table.column("path").to_pylist() if x]
    with open(p, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        return []
    if "path" in rows[0]:
        col = rows[0].index("path")
        return [r[col] for r in rows[1:] if len(r) > col and r[col]]
    return [r[0] for r in rows if r and r[0]]


def scan_sources(
    images: str | os.PathLike,
    *,
    use_hash: bool = False,
    manifest: str | os.PathLike | None = None,
    skipped: list[SkippedEntry] | None = None,
) -> tuple[list[SourceFile], list[tuple[str, str]]]:
    """Source files under ``images`` (sorted by ``rel``), or those a ``manifest`` lists, and the files that
    cannot be embedded as ``(path, reason)``: key collisions, and manifest entries that do not exist or are
    not regular files.

    Manifest paths are relative to ``images`` or absolute; ``rel`` is the path relative to ``images`` (the
    absolute path for files outside it), and labels come from ``rel``'s folders as for a folder scan.
    """
    root = Path(images)
    failed: list[tuple[str, str]] = []
    found: list[SourceFile] = []
    if manifest is None:
        for f in walk_images(root, skipped):
            try:
                found.append(_source(f.path, f.rel, f.domain, f.class_name, use_hash))
            except OSError as e:  # vanished or unreadable since it was listed
                failed.append((str(f.path), f"cannot read file ({e.strerror or e})"))
    else:
        for entry in read_manifest(manifest):
            p = Path(entry)
            full = p if p.is_absolute() else root / p
            try:
                rel = full.resolve().relative_to(root.resolve()).as_posix()
            except ValueError:
                rel = str(full.resolve())
            try:
                if not full.is_file():
                    failed.append((str(full), "no such file" if not full.exists() else "not a regular file"))
                    continue
                domain, class_name = _labels(rel)
                found.append(_source(full, rel, domain, class_name, use_hash))
            except OSError as e:
                failed.append((str(full), f"cannot read file ({e.strerror or e})"))
        found.sort(key=lambda s: s.rel)
    out: list[SourceFile] = []
    owner: dict[int, str] = {}
    for s in found:
        if s.key in owner:
            if owner[s.key] != s.rel:
                failed.append((s.path, f"key collision with {owner[s.key]} (rename either file)"))
            continue  # the same file listed twice in a manifest: once is enough
        owner[s.key] = s.rel
        out.append(s)
    return out, failed


def scan_image_folder(
    folder: str | os.PathLike, skipped: list[SkippedEntry] | None = None
) -> list[tuple[Path, dict[str, Any]]]:
    """Image files under ``folder`` (by suffix, hidden files skipped), sorted, with metadata.

    Metadata (:meth:`SourceFile.metadata`): ``path`` (absolute), ``rel`` (relative to ``folder``), and from
    the folders between: ``<domain>/<class>/<file>`` -> ``domain``, ``class``; ``<class>/<file>`` ->
    ``class``; deeper trees use the two innermost folders; ``file`` = ``{size, mtime_ns}``. Entries that are
    not regular files, and folders that cannot be listed, go to ``skipped`` with a reason (never opened).
    """
    out = []
    for f in walk_images(folder, skipped):
        try:
            meta = _source(f.path, f.rel, f.domain, f.class_name, False).metadata()
        except OSError as e:
            if skipped is not None:
                skipped.append(SkippedEntry(f.path, f"cannot read file ({e.strerror or e})"))
            continue
        out.append((f.path, meta))
    return out


def model_info(embedder: EmbedderLike) -> dict[str, Any]:
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


def gallery_options(embedder: EmbedderLike, **gallery_kwargs: Any) -> dict[str, Any]:
    """``Gallery(**options)`` for a gallery of ``embedder``'s embeddings: ``ndim``, ``metric`` (the export's,
    unless given), ``model_fingerprint`` and ``model_info``, plus ``gallery_kwargs``."""
    opts = dict(gallery_kwargs)
    opts.setdefault("metric", getattr(embedder.metadata, "metric", "cos") or "cos")
    if opts["metric"] == "poincare":
        opts.setdefault("curvature", embedder.metadata.curvature)
    return {"ndim": embedder.embedding_dim, "model_fingerprint": embedder.model_fingerprint,
            "model_info": model_info(embedder), **opts}


def _keyed(files: Sequence[tuple[Path, dict[str, Any]]]) -> tuple[list[int], list[tuple[Any, str]]]:
    """Positions in ``files`` of the files to embed (first owner of each key) and the key collisions."""
    owner: dict[int, str] = {}
    keep, collided = [], []
    for i, (p, meta) in enumerate(files):
        rel = str(meta.get("rel", p))
        k = item_key(rel)
        if k in owner and owner[k] != rel:
            collided.append((p, f"key collision with {owner[k]} (rename either file)"))
            continue
        owner[k] = rel
        keep.append(i)
    return keep, collided


def embed_into(
    gallery: GalleryLike,
    files: Sequence[tuple[Path, dict[str, Any]]],
    embedder: EmbedderLike,
    *,
    batch_size: int = 32,
    workers: int | None = None,
    progress: Any = False,
) -> EmbedResultLike:
    """Embed ``files`` (from :func:`scan_image_folder`) and add each readable one to ``gallery`` with key =
    :func:`item_key` of its ``rel``. Returns the ``EmbedResult`` (``indices`` are positions in ``files``;
    its ``errors`` name each skipped file, key collisions included)."""
    keep, collided = _keyed(files)
    res = embedder.embed_images([files[i][0] for i in keep], batch_size=batch_size, workers=workers, progress=progress)
    res.indices = np.asarray([keep[i] for i in res.indices], dtype=np.int64)
    res.errors = list(res.errors) + collided
    if len(res.indices):
        keys = np.asarray([item_key(str(files[i][1].get("rel", files[i][0]))) for i in res.indices], dtype=np.uint64)
        metas = [{**files[i][1], "embedding_hash": vector_hash(res.embeddings[j])} for j, i in enumerate(res.indices)]
        gallery.add(keys, res.embeddings, metas)
    return res


def iter_chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    """``items`` in consecutive slices of at most ``size``."""
    for s in range(0, len(items), size):
        yield items[s : s + size]


def gallery_from_folder(
    folder: str | os.PathLike,
    embedder: EmbedderLike,
    *,
    batch_size: int = 32,
    workers: int | None = None,
    progress: Any = False,
    **gallery_kwargs: Any,
) -> tuple[Gallery, EmbedResultLike]:
    """Embed every image file under ``folder`` into a new :class:`~tki_sdk.runtime.index.gallery.Gallery`.

    The same code ``tki embed`` runs. ``gallery_kwargs`` go to ``Gallery`` (``exact``, ``dtype``, ...); the
    metric, dimension and model fingerprint come from ``embedder``. Returns ``(gallery, EmbedResult)``; the
    result's ``errors`` name each skipped file with its reason. Raises ``ValueError`` for a folder with no
    image file.
    """
    files = scan_image_folder(folder)
    if not files:
        raise ValueError(f"no image files under {folder}")
    g = Gallery(**gallery_options(embedder, **gallery_kwargs))
    return g, embed_into(g, files, embedder, batch_size=batch_size, workers=workers, progress=progress)
