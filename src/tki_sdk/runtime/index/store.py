"""The versioned gallery folder: atomic saves, shared-lock loads, one live version named by ``CURRENT``.

On disk::

    G/CURRENT                 name of the live version (replaced atomically)
    G/.lock                   flock target: saves hold it exclusively, loads shared
    G/.writer.lock            flock target: a writing run (tki embed, tki index) holds it exclusively from its
                              listing to its last save (:func:`writer_lock`); readers never take it
    G/v-<id>/gallery.json     the manifest (:class:`tki_sdk.common.gallery_manifest.GalleryManifest`)
    G/v-<id>/index.usearch    HNSW graph + vectors   (exact galleries: keys.npy + vectors.npy)
    G/v-<id>/keys.npy, vectors.npy   re-ranking copy of an HNSW gallery (float16 vectors)
    G/v-<id>/meta.sqlite      metadata (:class:`~tki_sdk.runtime.index.metadata_store.MetadataStore`)
    G/embed-run/              an unfinished ``tki embed`` run (:mod:`tki_sdk.runtime.pipeline.embed_run`); saves keep it

:func:`save_version` writes a complete new version beside the old one (every file fsync'ed by the writer),
renames it into place and only then swaps ``CURRENT`` (the common atomic writer: temporary file, fsync,
rename, fsync of the folder). A save killed at any point leaves the previous version loadable; older
versions and leftovers of interrupted saves are removed after the swap (a ``.tmp-*`` folder another save is
still writing holds a ``flock`` and is left alone). The version is written without any lock; its checks, the
rename, the swap and the cleanup run under an exclusive ``flock``, so concurrent saves serialise there and
``CURRENT`` always names a complete version; :func:`live_version` reads under a shared lock, so a reader
waits at most for a swap, never for a write.

One writer per gallery: :func:`writer_lock` serialises whole runs (load, change, save), not only saves,
so two runs can never both start from one version and the later save drop what the earlier added. Saves are
compare-and-swap: ``save_version(root, write, expect=name)`` publishes only while ``CURRENT`` still names
``name`` (``""``: no gallery yet), checked under the save lock; otherwise :class:`StaleVersionError` and
nothing is replaced. Readers take only the save lock, shared, for the moment they open a version.

Creation can be exclusive: ``save_version(root, write, overwrite=False)`` refuses (:class:`GalleryExistsError`)
a ``root`` that is already a gallery, checked again under the lock, so of two runs racing to create one new
gallery exactly one wins and the other is refused with nothing replaced. A save that fails while writing
(a full disk: ``OSError``, usearch's ``RuntimeError``, an ``sqlite3`` error) removes its partial version and
raises :class:`GalleryWriteError` (an ``OSError``, one line); the live version is untouched.

Integrity: ``gallery.json`` records the size and SHA-256 of each file of its version
(:func:`file_records`); :func:`verify_files` compares them before anything is read (``"size"``: sizes only;
``"sha256"``: full hashes; ``"auto"``: hashes when the files total at most :data:`AUTO_SHA256_LIMIT`, sizes
above) and raises :class:`GalleryDamagedError` naming the file.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from tki_sdk.common.atomic import atomic_write_text, fsync_dir, sha256_file
from tki_sdk.common.errors import one_line
from tki_sdk.common.gallery_manifest import MANIFEST_FILE

__all__ = [
    "CURRENT_FILE", "LOCK_FILE", "RUN_DIR", "MANIFEST_FILE", "INDEX_FILE", "KEYS_FILE", "VECTORS_FILE", "META_FILE",
    "VERIFY_MODES", "AUTO_SHA256_LIMIT", "GalleryDamagedError", "GalleryExistsError", "GalleryWriteError",
    "WRITER_LOCK_FILE", "StaleVersionError", "WriterBusyError", "writer_lock", "current_version", "folder_lock", "is_empty_dir", "read_current", "is_gallery", "save_version", "live_version",
    "file_records", "verify_files", "damaged",
]

CURRENT_FILE = "CURRENT"
LOCK_FILE = ".lock"
WRITER_LOCK_FILE = ".writer.lock"
INDEX_FILE = "index.usearch"
KEYS_FILE = "keys.npy"
VECTORS_FILE = "vectors.npy"
META_FILE = "meta.sqlite"
#: Folder of an unfinished embedding run inside a gallery folder (not part of any version).
RUN_DIR = "embed-run"

#: How a load checks a version's files against ``gallery.json``: ``"size"`` (sizes only: catches cut, emptied
#: and deleted files, not changed bytes), ``"sha256"`` (full hashes: reads every byte once), ``"auto"``
#: (the default of :meth:`Gallery.load` / :meth:`Gallery.view`: ``"sha256"`` up to :data:`AUTO_SHA256_LIMIT`
#: bytes in all, ``"size"`` above).
VERIFY_MODES = ("auto", "size", "sha256")
#: Largest version (bytes, all files) that ``verify="auto"`` hashes in full (~0.2 s at 400 MB/s).
AUTO_SHA256_LIMIT = 64 << 20

_REBUILD = "rebuild it with tki embed --overwrite"


class GalleryDamagedError(ValueError):
    """A gallery file is missing, cut or changed, or cannot be read; the message (one line) names the file and
    what to do."""


class GalleryExistsError(FileExistsError):
    """``save(..., overwrite=False)`` found a gallery at the path (another run may have just created it)."""


class GalleryWriteError(OSError):
    """A save failed while writing (a full disk, an I/O error); the previous version, if any, is live."""


class StaleVersionError(Exception):
    """A compare-and-swap save found ``CURRENT`` naming another version than the one it was based on."""


class WriterBusyError(Exception):
    """:func:`writer_lock` with ``wait=False`` found another writer holding the gallery."""


def damaged(where: str | os.PathLike, what: str) -> GalleryDamagedError:
    """``GalleryDamagedError("gallery <where> is damaged: <what>; rebuild it with tki embed --overwrite")``."""
    what = " ".join(str(what).split())
    return GalleryDamagedError(f"gallery {where} is damaged: {what}; {_REBUILD} (or restore it from a copy)")


def file_records(folder: Path) -> dict[str, dict[str, object]]:
    """``{name: {"bytes", "sha256"}}`` of the regular files in a version folder, except ``gallery.json``."""
    out: dict[str, dict[str, object]] = {}
    for p in sorted(folder.iterdir()):
        if p.name == MANIFEST_FILE or p.name.startswith(".") or not p.is_file():
            continue
        out[p.name] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
    return out


def verify_files(root: Path, folder: Path, records: dict[str, dict[str, object]], verify: str = "auto") -> str:
    """Compare the files of ``folder`` with ``records`` (``gallery.json``'s ``files``); returns what was checked
    (``"sha256"``, ``"size"`` or ``"none"`` for galleries that record nothing). Raises
    :class:`GalleryDamagedError` naming the first missing, cut or changed file."""
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify={verify!r} unknown; use one of {', '.join(VERIFY_MODES)}")
    if not records:
        return "none"
    total = sum(int(r["bytes"]) for r in records.values())  # type: ignore[call-overload]
    full = verify == "sha256" or (verify == "auto" and total <= AUTO_SHA256_LIMIT)
    for name, rec in records.items():
        p = folder / name
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            raise damaged(root, f"{name} is missing") from None
        except OSError as e:
            raise damaged(root, f"{name} cannot be read ({e.strerror or e})") from None
        if size != rec["bytes"]:
            raise damaged(root, f"{name} is {size:,} bytes, gallery.json records {rec['bytes']:,}")
    if full:
        for name, rec in records.items():
            try:
                digest = sha256_file(folder / name)
            except OSError as e:
                raise damaged(root, f"{name} cannot be read ({e.strerror or e})") from None
            if digest != rec["sha256"]:
                raise damaged(root, f"{name} differs from the sha256 gallery.json records")
    return "sha256" if full else "size"


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


@contextlib.contextmanager
def writer_lock(root: Path, *, wait: bool = True, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold ``root/.writer.lock`` exclusively (``root`` is created if needed): one writing run per gallery.

    When another process holds it: ``wait=False`` raises :class:`WriterBusyError` (one line, naming the holder's
    pid when known); ``wait=True`` calls ``on_wait(holder)`` once and blocks until it is released. The lock
    goes with the process (``flock``), so a killed run never leaves the gallery locked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX platforms: saves are still atomic and compare-and-swap
        yield
        return
    told = False
    while True:
        root.mkdir(parents=True, exist_ok=True)
        path = root / WRITER_LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                try:
                    holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
                except OSError:
                    holder = "unknown"
                if not wait:
                    raise WriterBusyError(f"gallery {root} is being written by another run (pid {holder}); "
                                          "run again once it has finished") from None
                if on_wait is not None and not told:
                    on_wait(holder)
                    told = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the holder removed the folder it had created: lock the new one
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
            yield
            return
        finally:
            os.close(fd)  # closing the descriptor releases the lock


def current_version(root: Path) -> str:
    """The name ``CURRENT`` holds now (``""`` when ``root`` is no gallery yet): what a compare-and-swap save
    expects."""
    cur = root / CURRENT_FILE
    try:
        return cur.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return ""
    except (OSError, UnicodeDecodeError) as e:
        raise damaged(root, f"{CURRENT_FILE} cannot be read ({getattr(e, 'strerror', None) or e})") from None


def is_empty_dir(root: Path) -> bool:
    """True when ``root`` holds nothing but the lock file, an unfinished embedding run and leftovers of
    interrupted saves."""
    return not any(c.name not in (LOCK_FILE, WRITER_LOCK_FILE, RUN_DIR) and not c.name.startswith(".tmp-") for c in root.iterdir())


def _only_gallery_entries(root: Path) -> bool:
    """True when every entry of ``root`` is one a save writes (lock, versions, ``CURRENT`` and temporaries)
    or the folder of an unfinished embedding run: a first save caught between renaming its version into place
    and writing ``CURRENT``, or the first save of a ``tki embed`` run."""
    return all(c.name in (LOCK_FILE, WRITER_LOCK_FILE, CURRENT_FILE, RUN_DIR) or c.name.startswith((".tmp-", "v-", f".{CURRENT_FILE}."))
               for c in root.iterdir())


def read_current(root: Path) -> Path:
    """The live version folder of the gallery at ``root`` (``root`` itself for a bare version folder)."""
    cur = root / CURRENT_FILE
    if not cur.is_file():
        if (root / MANIFEST_FILE).is_file():  # a bare version folder
            return root
        raise FileNotFoundError(f"{root} is not a gallery (no {CURRENT_FILE}); build one with tki embed")
    try:
        name = cur.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise damaged(root, f"{CURRENT_FILE} cannot be read ({getattr(e, 'strerror', None) or e})") from None
    if not name or "/" in name or name.startswith(".") or not name.isprintable():
        raise damaged(root, f"{CURRENT_FILE} is corrupt ({name!r})")
    return root / name


def is_gallery(path: str | os.PathLike) -> bool:
    """True when ``path`` is a gallery folder (holds ``CURRENT``) or a gallery version folder."""
    p = Path(path)
    return p.is_dir() and ((p / CURRENT_FILE).is_file() or ((p / MANIFEST_FILE).is_file() and (p / META_FILE).is_file()))


def _exists_error(root: Path) -> GalleryExistsError:
    return GalleryExistsError(f"gallery {root} already exists (another run may have just created it); "
                              "pass --overwrite to replace it, or choose another --out")


def save_version(root: Path, write: Callable[[Path], None], *, overwrite: bool = True,
                 expect: str | None = None) -> Path:
    """Create ``root`` if needed and publish a new version written by ``write(folder)``; returns the version.

    Refuses (``FileExistsError``) a ``root`` that is a file or a non-empty folder that is not a gallery.
    ``overwrite=False``: creation is exclusive -- a ``root`` that is already a gallery, or becomes one while
    this save waits for the lock, is refused with :class:`GalleryExistsError` and left as it is.
    ``overwrite=True`` (the default): the new version replaces the live one.
    ``expect``: compare-and-swap -- publish only while ``CURRENT`` names ``expect`` (``""``: no gallery yet),
    checked under the lock; otherwise :class:`StaleVersionError` (one line) and nothing is replaced.
    A failure while writing raises :class:`GalleryWriteError` (see the module docstring).
    """
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a gallery folder; choose another --out")
    if root.is_dir() and not _only_gallery_entries(root) and not is_gallery(root):
        raise FileExistsError(f"{root} is a non-empty folder that is not a gallery; refusing to write into it")
    if not overwrite and is_gallery(root):
        raise _exists_error(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GalleryWriteError(f"cannot create gallery folder {root}: {one_line(e)}") from None
    tmp, hold = _write_tmp(root, write)  # written without the lock: readers never wait for a write
    try:
        with folder_lock(root, exclusive=True):  # only the checks, the swap and the cleanup hold it
            if not _only_gallery_entries(root) and not is_gallery(root):  # checked again now that we own it
                raise FileExistsError(f"{root} is a non-empty folder that is not a gallery; refusing to write into it")
            if not overwrite and is_gallery(root):  # another creator won the race
                raise _exists_error(root)
            if expect is not None:
                now = current_version(root)
                if now != expect:
                    raise StaleVersionError(
                        f"gallery {root} changed while this run worked (its live version is {now or 'gone'}, the "
                        f"run started from {expect or 'no gallery'}); nothing was replaced: run it again")
            return _publish(root, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when published
        os.close(hold)


def _write_failure(root: Path, tmp: Path, e: BaseException) -> GalleryWriteError:
    """One line for a failed write: the reason (``no space left`` when the disk is full) and what is kept."""
    reason = one_line(e)
    try:
        free = shutil.disk_usage(tmp if tmp.exists() else root).free
    except OSError:
        free = None
    full = (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or (free is not None and free < 1 << 20)
    if full and "space" not in reason:
        reason += f" (no space left on the device: {free:,} bytes free)" if free is not None else " (no space left)"
    kept = ("the previous version is kept" if (root / CURRENT_FILE).is_file() else "nothing was written")
    return GalleryWriteError(f"cannot write gallery {root}: {reason}; {kept}")


def _write_tmp(root: Path, write: Callable[[Path], None]) -> tuple[Path, int]:
    """``write`` a complete version into a new ``.tmp-*`` folder (fsync'ed); returns it and a descriptor
    holding a ``flock`` on it, so another save's cleanup leaves an unfinished write alone."""
    tmp = root / f".tmp-{uuid.uuid4().hex}"
    try:
        tmp.mkdir()
        hold = os.open(tmp, os.O_RDONLY)
    except OSError as e:
        raise _write_failure(root, tmp, e) from None
    try:
        _flock(hold, blocking=True)
        write(tmp)
        fsync_dir(tmp)
    except (OSError, RuntimeError, sqlite3.Error) as e:
        err = _write_failure(root, tmp, e)
        shutil.rmtree(tmp, ignore_errors=True)
        os.close(hold)
        raise err from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        os.close(hold)
        raise
    return tmp, hold


def _flock(fd: int, *, blocking: bool) -> bool:
    """Exclusive ``flock`` on ``fd``; False when ``blocking=False`` and another holds it (True where flock is
    unavailable)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def _in_progress(folder: Path) -> bool:
    """True when another save is still writing ``folder`` (it holds the folder's flock)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return False
    try:
        return not _flock(fd, blocking=False)
    finally:
        os.close(fd)


def _publish(root: Path, tmp: Path) -> Path:
    """Rename the written ``tmp`` into place and point ``CURRENT`` at it (the caller holds the lock)."""
    try:
        final = root / f"v-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}"
        os.rename(tmp, final)
        fsync_dir(root)
        atomic_write_text(root / CURRENT_FILE, final.name + "\n")
    except (OSError, RuntimeError, sqlite3.Error) as e:
        err = _write_failure(root, tmp, e)
        if "final" in locals():
            shutil.rmtree(final, ignore_errors=True)
        raise err from None
    # The new version is live: remove older versions and leftovers of interrupted saves.
    for child in root.iterdir():
        if child.name in (final.name, CURRENT_FILE, LOCK_FILE, WRITER_LOCK_FILE):
            continue
        if child.name.startswith(("v-", ".tmp-")) and child.is_dir():
            if child.name.startswith(".tmp-") and _in_progress(child):
                continue  # another save is writing it
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
            raise damaged(root, f"{CURRENT_FILE} names a missing version {d.name}")
        yield d
