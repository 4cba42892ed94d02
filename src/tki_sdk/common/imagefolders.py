"""Image folders: the suffix set, the one folder walker, and the default dataset location.

Layout conventions (PACS, Office-Home, DomainNet): ``<root>/<domain>/<class>/<file>`` or
``<root>/<class>/<file>``, optionally under ``<root>/images/``. :func:`walk_images` is the only code in
tki-sdk that lists image files; ``tki embed``, ``Gallery.from_folder``, the benchmarks' datasets, export
calibration, the demo and the GPU suite all read folders through it.
"""
from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "IMAGE_SUFFIXES", "PACS_CLASSES", "ImageFile", "SkippedEntry", "walk_images", "list_images", "DATASET_ENV", "REPO_PACS_DIR",
    "default_dataset_source", "default_dataset_dir", "discover_classes",
]

#: File suffixes (lower case) of the formats tki-sdk reads, all decoded by Pillow: JPEG, PNG, GIF, BMP, TIFF,
#: WebP and the Netpbm family.
IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm"}
)

#: The seven PACS classes (the demo trains on them; the train benchmark's default class list).
PACS_CLASSES: tuple[str, ...] = ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person")

#: Environment variable naming the default image folder (``<domain>/<class>/<image>``).
DATASET_ENV = "TKI_PACS_DIR"
#: The PACS copy in a ``shared`` folder beside the repository checkout.
REPO_PACS_DIR = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "pacs" / "images"


@dataclass(frozen=True)
class ImageFile:
    """One image file found under a root: ``path`` (as found, under the root), ``rel`` (POSIX path relative
    to the root), and the ``domain`` / ``class_name`` read from the folders between (``<domain>/<class>/<file>``
    gives both, ``<class>/<file>`` the class only; deeper trees use the two innermost folders)."""

    path: Path
    rel: str
    domain: str | None
    class_name: str | None


@dataclass(frozen=True)
class SkippedEntry:
    """A folder entry the walker did not read, and why (an unreadable folder, a FIFO named ``x.jpg``, ...)."""

    path: Path
    reason: str


def _labels(rel_parts: tuple[str, ...]) -> tuple[str | None, str | None]:
    folders = rel_parts[:-1]
    if len(folders) >= 2:
        return folders[-2], folders[-1]
    if len(folders) == 1:
        return None, folders[0]
    return None, None


def walk_images(root: str | os.PathLike, skipped: list[SkippedEntry] | None = None) -> Iterator[ImageFile]:
    """Image files under ``root`` (recursive, by suffix, case-insensitive), in sorted order of ``rel``.

    Hidden files and folders (names starting with ``.``) are skipped. Symbolic links to files are followed;
    symbolic links to folders are not descended (no loops). Entries that are not regular files (FIFOs,
    sockets, devices, dangling or looping links) are never opened: they go to ``skipped`` with a reason,
    as do folders that cannot be listed. Raises ``NotADirectoryError`` when ``root`` is not a folder.
    """
    top = Path(root)
    if not top.is_dir():
        raise NotADirectoryError(f"{top} is not a folder")

    def walk(folder: Path, rel: tuple[str, ...]) -> Iterator[ImageFile]:
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            if skipped is not None:
                skipped.append(SkippedEntry(folder, f"cannot list folder ({e.strerror or e})"))
            return
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            path = folder / name
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                is_dir = False
            if is_dir:
                yield from walk(path, rel + (name,))
                continue
            if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                mode = os.stat(path).st_mode  # follows links; raises on dangling or looping ones
            except OSError as e:
                if skipped is not None:
                    why = "symbolic link loop" if getattr(e, "errno", None) == 40 else (e.strerror or str(e))
                    skipped.append(SkippedEntry(path, f"cannot open ({why})"))
                continue
            if not stat.S_ISREG(mode):
                if skipped is not None:
                    kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
                            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a folder"
                            if stat.S_ISDIR(mode) else "not a regular file")
                    skipped.append(SkippedEntry(path, f"not a regular file ({kind})"))
                continue
            parts = rel + (name,)
            domain, class_name = _labels(parts)
            yield ImageFile(path=path, rel="/".join(parts), domain=domain, class_name=class_name)

    yield from walk(top, ())


def list_images(root: str | os.PathLike, skipped: list[SkippedEntry] | None = None) -> list[ImageFile]:
    """:func:`walk_images` as a list."""
    return list(walk_images(root, skipped))


def default_dataset_source(repo_pacs: Path = REPO_PACS_DIR) -> tuple[Path | None, str]:
    """The image folder to use when none is given, and where it came from (or why there is none).

    ``$TKI_PACS_DIR`` when set (only if it is a folder: a set variable is never silently replaced by another
    location), otherwise ``repo_pacs`` when it exists. Used by the demo, the benchmarks and export calibration.
    """
    env = os.environ.get(DATASET_ENV)
    if env:
        p = Path(env).expanduser()
        return (p, f"${DATASET_ENV}") if p.is_dir() else (None, f"${DATASET_ENV}={env} is not a folder")
    if repo_pacs.is_dir():
        return repo_pacs.resolve(), "PACS beside the repository"
    return None, f"${DATASET_ENV} unset and no PACS copy at {repo_pacs}"


def default_dataset_dir() -> Path | None:
    """The folder of :func:`default_dataset_source`, or None."""
    return default_dataset_source()[0]


def discover_classes(root: str | os.PathLike) -> list[str]:
    """Sorted class names of a dataset folder: the class folders of ``<root>[/images]/<domain>/<class>/``
    (union over domains) or, when no domain level exists, of ``<root>[/images]/<class>/``. Only folders that
    hold images count, so stray folders (notes, splits) never become classes."""
    r = Path(root)
    if not r.is_dir():
        raise FileNotFoundError(f"dataset folder {r} does not exist")
    for base in (r, r / "images"):
        if not base.is_dir():
            continue
        files = list_images(base)
        two_level = sorted({f.class_name for f in files if f.domain is not None and f.rel.count("/") == 2})
        if two_level:
            return two_level  # type: ignore[return-value]
        flat = sorted({f.class_name for f in files if f.rel.count("/") == 1})
        if flat:
            return flat  # type: ignore[return-value]
    raise ValueError(f"no class folders with images under {r}; expected <domain>/<class>/<image> or <class>/<image>")
