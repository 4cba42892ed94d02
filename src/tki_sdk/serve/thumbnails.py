"""Thumbnails of gallery items: a JPEG no larger than ``max_px`` on its long side, of the file the item's
metadata names (``path``). Only keys present in the served gallery reach this module, so no request can
name a file.

The file is read only when it is a regular file inside the image root (:func:`read_inside`): the root is the
configured ``--image-root``, else the item's own images folder (its ``path`` minus its ``rel``, the path
relative to the folder it was embedded from), else (no ``rel``) the folder holding the file. The path is resolved (every symbolic link, in the folders
too) and must stay inside the resolved root; the last component is opened with ``O_NOFOLLOW`` and checked
to be a regular file on the open descriptor, so a link swapped in after the check is not followed either.
Decoding goes through the runtime's guarded loader (pixel limit, corrupt files refused). Recently made
thumbnails are kept in a small LRU cache keyed by (gallery version, key).
"""
from __future__ import annotations

import io
import os
import stat
import threading
from collections import OrderedDict
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

from PIL import Image

from tki_sdk.runtime.engine.images import ImageLoadError, load_image

__all__ = ["ThumbnailCache", "make_thumbnail", "image_root_of", "read_inside"]

#: Largest image file read for a thumbnail.
MAX_FILE_BYTES = 256 * 2**20


def image_root_of(meta: Mapping[str, Any], configured: Path | None) -> Path | None:
    """The folder the item's file must lie in: ``configured``; else ``path`` with ``rel`` taken off its end
    (the folder the item was embedded from); else, for an item without a matching ``rel``, the folder of
    ``path`` itself. None when the item names no path."""
    if configured is not None:
        return Path(configured)
    path, rel = meta.get("path"), meta.get("rel")
    if not isinstance(path, str) or not path:
        return None
    parts = Path(path).parts
    rel_parts = PurePosixPath(rel).parts if isinstance(rel, str) and rel else ()
    if (rel_parts and ".." not in rel_parts and len(parts) > len(rel_parts)
            and parts[-len(rel_parts):] == rel_parts):
        return Path(*parts[: -len(rel_parts)])
    return Path(path).parent


def read_inside(path: Path, root: Path) -> bytes:
    """The bytes of ``path`` when it resolves to a regular file inside ``root``; :class:`ImageLoadError`."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if os.path.commonpath([real_root, real]) != real_root or real == real_root:
        raise ImageLoadError(path, "the file lies outside the gallery's image root (a symbolic link?); refused")
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ImageLoadError(path, "no such file") from None
    except OSError as e:
        raise ImageLoadError(path, f"cannot open the file ({e.strerror or e}); refused") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ImageLoadError(path, "not a regular file; refused")
        if st.st_size > MAX_FILE_BYTES:
            raise ImageLoadError(path, f"file of {st.st_size:,} bytes is too large for a thumbnail")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=True) as f:
            fd = -1
            return f.read(MAX_FILE_BYTES + 1)
    finally:
        if fd >= 0:
            os.close(fd)


def make_thumbnail(image: Path | bytes, max_px: int, max_pixels: int) -> bytes:
    """JPEG bytes of ``image`` (a path or encoded bytes) reduced so that its long side is at most ``max_px``;
    :class:`ImageLoadError`."""
    im = load_image(image, max_pixels=max_pixels, draft_size=(max_px, max_px))
    try:
        im.thumbnail((max_px, max_px), Image.Resampling.BICUBIC)
        rgb = im.convert("RGB")
        buf = io.BytesIO()
        rgb.save(buf, format="JPEG", quality=85)
        return buf.getvalue()
    except (OSError, ValueError) as e:
        raise ImageLoadError(image if isinstance(image, Path) else "upload",
                             f"cannot make a thumbnail ({e})") from None
    finally:
        im.close()


class ThumbnailCache:
    """Bounded LRU of thumbnail bytes; thread-safe."""

    def __init__(self, max_px: int, max_pixels: int, capacity: int) -> None:
        self.max_px = int(max_px)
        self.max_pixels = int(max_pixels)
        self.capacity = int(capacity)
        self._items: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, version: str, key: int, path: Path, root: Path) -> bytes:
        """The thumbnail of item ``key`` of ``version``, made from ``path`` (which must lie inside ``root``)."""
        with self._lock:
            data = self._items.get((version, key))
            if data is not None:
                self._items.move_to_end((version, key))
                return data
        data = make_thumbnail(read_inside(path, root), self.max_px, self.max_pixels)
        if self.capacity > 0:
            with self._lock:
                self._items[(version, key)] = data
                while len(self._items) > self.capacity:
                    self._items.popitem(last=False)
        return data
