"""The versioned gallery folder: atomic saves, shared-lock loads, one live version named by ``CURRENT``.

On disk::

    G/CURRENT                 name of the live version (replaced atomically)
    G/.lock                   flock target: saves hold it exclusively, loads shared
    G/v-<id>/gallery.json     the manifest (:class:`tki_sdk.common.gallery_manifest.GalleryManifest`)
    G/v-<id>/index.usearch    HNSW graph + vectors   (exact galleries: keys.npy + vectors.npy)
    G/v-<id>/keys.npy, vectors.npy   re-ranking copy of an HNSW gallery (float16 vectors)
    G/v-<id>/meta.sqlite      metadata (:class:`~tki_sdk.runtime.metadata_store.MetadataStore`)
    G/embed-run/              an unfinished ``tki embed`` run (:mod:`tki_sdk.runtime.embed_run`); saves keep it

:func:`save_version` writes a complete new version beside the old one (every file fsync'ed by the writer),
renames it into place and only then swaps ``CURRENT`` (the common atomic writer: temporary file, fsync,
rename, fsync of the folder). A save killed at any point leaves the previous version loadable; older
versions and leftovers of interrupted saves are removed after the swap. The whole save runs under an
exclusive ``flock``, so concurrent saves to one folder serialise and ``CURRENT`` always names a complete
version; :func:`live_version` reads under a shared lock.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from tki_sdk.common.atomic import atomic_write_text, fsync_dir
from tki_sdk.common.gallery_manifest import MANIFEST_FILE

__all__ = [
    "CURRENT_FILE", "LOCK_FILE", "RUN_DIR", "MANIFEST_FILE", "INDEX_FILE", "KEYS_FILE", "VECTORS_FILE", "META_FILE",
    "folder_lock", "is_empty_dir", "read_current", "is_gallery", "save_version", "live_version",
]

CURRENT_FILE = "CURRENT"
LOCK_FILE = ".lock"
INDEX_FILE = "index.usearch"
KEYS_FILE = "keys.npy"
VECTORS_FILE = "vectors.npy"
META_FILE = "meta.sqlite"
#: Folder of an unfinished embedding run inside a gallery folder (not part of any version).
RUN_DIR = "embed-run"


@contextlib.contextmanager
def folder_lock(root: Path, *, exclusive: bool) -> Iterator[None]:
    """``flock`` on ``root/.lock``: exclusive for a save, shared for a load (no-op where unavailable).

    A shared lock is taken only when the lock file exists and can be opened (a read-only gallery that
    nobody saves into needs none).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX platforms: saves are still atomic, not serialised
        yield
        return
    lock = root / LOCK_FILE
    try:
        if exclusive:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        else:
            fd = os.open(lock, os.O_RDONLY)
    except OSError:
        if exclusive:
            raise
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def is_empty_dir(root: Path) -> bool:
    """True when ``root`` holds nothing but the lock file, an unfinished embedding run and leftovers of
    interrupted saves."""
    return not any(c.name not in (LOCK_FILE, RUN_DIR) and not c.name.startswith(".tmp-") for c in root.iterdir())


def read_current(root: Path) -> Path:
    """The live version folder of the gallery at ``root`` (``root`` itself for a bare version folder)."""
    cur = root / CURRENT_FILE
    if not cur.is_file():
        if (root / MANIFEST_FILE).is_file():  # a bare version folder
            return root
        raise FileNotFoundError(f"{root} is not a gallery (no {CURRENT_FILE}); build one with tki embed")
    name = cur.read_text().strip()
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"{cur} is corrupt ({name!r})")
    return root / name


def is_gallery(path: str | os.PathLike) -> bool:
    """True when ``path`` is a gallery folder (holds ``CURRENT``) or a gallery version folder."""
    p = Path(path)
    return p.is_dir() and ((p / CURRENT_FILE).is_file() or ((p / MANIFEST_FILE).is_file() and (p / META_FILE).is_file()))


def save_version(root: Path, write: Callable[[Path], None]) -> Path:
    """Create ``root`` if needed and publish a new version written by ``write(folder)``; returns the version.

    Refuses (``FileExistsError``) a ``root`` that is a file or a non-empty folder that is not a gallery.
    """
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a gallery folder; choose another --out")
    if root.is_dir() and not is_empty_dir(root) and not is_gallery(root):
        raise FileExistsError(f"{root} is a non-empty folder that is not a gallery; refusing to write into it")
    root.mkdir(parents=True, exist_ok=True)
    with folder_lock(root, exclusive=True):
        if not is_empty_dir(root) and not is_gallery(root):  # checked again now that we own the folder
            raise FileExistsError(f"{root} is a non-empty folder that is not a gallery; refusing to write into it")
        return _publish(root, write)


def _publish(root: Path, write: Callable[[Path], None]) -> Path:
    tmp = root / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        write(tmp)
        fsync_dir(tmp)
        final = root / f"v-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}"
        os.rename(tmp, final)
        fsync_dir(root)
        atomic_write_text(root / CURRENT_FILE, final.name + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # The new version is live: remove older versions and leftovers of interrupted saves.
    for child in root.iterdir():
        if child.name in (final.name, CURRENT_FILE, LOCK_FILE):
            continue
        if child.name.startswith(("v-", ".tmp-")) and child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        elif child.name.startswith(f".{CURRENT_FILE}."):
            child.unlink(missing_ok=True)
    return final


@contextlib.contextmanager
def live_version(root: Path) -> Iterator[Path]:
    """The live version folder, held under a shared lock (no save may swap or delete it meanwhile)."""
    if not root.exists():
        raise FileNotFoundError(f"gallery {root} does not exist")
    locked = root.is_dir() and (root / CURRENT_FILE).is_file()
    with folder_lock(root, exclusive=False) if locked else contextlib.nullcontext():
        for _ in range(3):  # a concurrent save may swap versions between reading CURRENT and opening
            d = read_current(root)
            if d.is_dir():
                break
            time.sleep(0.05)
        else:
            raise FileNotFoundError(f"{root}/{CURRENT_FILE} names a missing version {d.name}; the gallery is damaged")
        yield d
