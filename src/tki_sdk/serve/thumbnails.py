"""Thumbnails of gallery items: a JPEG no larger than ``max_px`` on its long side, of the file the item's
metadata names (``path``). Only keys present in the served gallery reach this module, so no request can
name a file. Decoding goes through the runtime's guarded loader (pixel limit, corrupt files refused).
Recently made thumbnails are kept in a small LRU cache keyed by (gallery version, key).
"""
from __future__ import annotations

import io
import threading
from collections import OrderedDict
from pathlib import Path

from PIL import Image

from tki_sdk.runtime.engine.images import ImageLoadError, load_image

__all__ = ["ThumbnailCache", "make_thumbnail"]


def make_thumbnail(path: Path, max_px: int, max_pixels: int) -> bytes:
    """JPEG bytes of ``path`` reduced so that its long side is at most ``max_px``; :class:`ImageLoadError`."""
    im = load_image(path, max_pixels=max_pixels, draft_size=(max_px, max_px))
    try:
        im.thumbnail((max_px, max_px), Image.Resampling.BICUBIC)
        rgb = im.convert("RGB")
        buf = io.BytesIO()
        rgb.save(buf, format="JPEG", quality=85)
        return buf.getvalue()
    except (OSError, ValueError) as e:
        raise ImageLoadError(path, f"cannot make a thumbnail ({e})") from None
    finally:
        im.close()


class ThumbnailCache:
    """Bounded LRU of thumbnail bytes; thread-safe."""

    def __init__(self, max_px: int, max_pixels: int, capacity: int = 512) -> None:
        self.max_px = int(max_px)
        self.max_pixels = int(max_pixels)
        self.capacity = int(capacity)
        self._items: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, version: str, key: int, path: Path) -> bytes:
        with self._lock:
            data = self._items.get((version, key))
            if data is not None:
                self._items.move_to_end((version, key))
                return data
        data = make_thumbnail(path, self.max_px, self.max_pixels)
        if self.capacity > 0:
            with self._lock:
                self._items[(version, key)] = data
                while len(self._items) > self.capacity:
                    self._items.popitem(last=False)
        return data
