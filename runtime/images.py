"""Safe image decoding for the runtime: one bad file gives one clear error, never a crash or a huge allocation.

``load_image(item)`` accepts a path (``str`` / ``os.PathLike``), raw encoded ``bytes`` / ``bytearray`` /
``memoryview``, or an already-open ``PIL.Image.Image``, and returns a fully decoded PIL image (pixels read,
file closed). Every failure is an :class:`ImageLoadError` whose ``reason`` says what is wrong with that one
file:

- ``empty file``
- ``not an image (unrecognised format)``
- ``truncated or corrupt image data (...)``
- ``too many pixels: W x H = N > max_pixels M (...)`` -- refused from the header alone, before any
  pixel buffer is allocated (decompression-bomb guard)
- ``no such file`` / ``is a directory`` / ``cannot read file (...)``

Decompression bombs: the image header is parsed first, the declared ``width * height`` is compared with
``max_pixels`` (default: Pillow's own ``Image.MAX_IMAGE_PIXELS`` at import time, 89,478,485 pixels) and the
file is refused without decoding when it is larger. Pillow keeps its own process-wide guard
(``Image.MAX_IMAGE_PIXELS``, which raises at twice that value); when a caller asks for a ``max_pixels``
above it, that global is raised to ``max_pixels`` (never lowered), so the per-call limit is the one that
applies.
"""
from __future__ import annotations

import io
import logging
import os
import threading
from pathlib import Path
from struct import error as struct_error
from typing import Any, Callable, Union

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from tki_sdk.common.imagefolders import IMAGE_SUFFIXES as _IMAGE_SUFFIXES

log = logging.getLogger(__name__)

#: The one suffix set (:data:`tki_sdk.common.imagefolders.IMAGE_SUFFIXES`), re-exported for runtime users.
IMAGE_SUFFIXES = _IMAGE_SUFFIXES

#: Pillow's own warning threshold when this module was imported (89,478,485 pixels unless changed).
DEFAULT_MAX_PIXELS: int = int(Image.MAX_IMAGE_PIXELS or 89_478_485)

ImageItem = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image]

_pillow_limit_lock = threading.Lock()


class ImageLoadError(Exception):
    """One input could not be turned into an image. ``item`` is what was given, ``reason`` a short sentence."""

    def __init__(self, item: Any, reason: str) -> None:
        super().__init__(reason)
        self.item = item
        self.reason = reason

    def __str__(self) -> str:
        return f"{describe_item(self.item)}: {self.reason}"


def describe_item(item: Any) -> str:
    """Short printable name of an input item (the path, or the kind and size of in-memory data)."""
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    if isinstance(item, (bytes, bytearray, memoryview)):
        return f"<{len(item)} bytes>"
    if isinstance(item, Image.Image):
        return f"<PIL image {item.mode} {item.size[0]}x{item.size[1]}>"
    return f"<{type(item).__name__}>"


def _ensure_pillow_allows(max_pixels: int | None) -> None:
    """Raise Pillow's global bomb limit to ``max_pixels`` when that is larger (never lowers it)."""
    if max_pixels is None:
        return
    with _pillow_limit_lock:
        cur = Image.MAX_IMAGE_PIXELS
        if cur is not None and max_pixels > cur:
            log.info("raising PIL.Image.MAX_IMAGE_PIXELS from %s to %s (max_pixels)", cur, max_pixels)
            Image.MAX_IMAGE_PIXELS = int(max_pixels)


def check_pixels(width: int, height: int, max_pixels: int | None, item: Any = None) -> None:
    """Refuse a declared ``width x height`` larger than ``max_pixels`` (``None`` = no limit)."""
    n = int(width) * int(height)
    if max_pixels is not None and n > max_pixels:
        raise ImageLoadError(
            item,
            f"too many pixels: {width} x {height} = {n:,} > max_pixels {max_pixels:,} "
            "(possible decompression bomb; raise max_pixels to allow it)",
        )
    if n <= 0:
        raise ImageLoadError(item, f"image declares an empty size {width} x {height}")


def load_image(
    item: ImageItem,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | Callable[[int, int], tuple[int, int] | None] | None = None,
    exif_transpose: bool = False,
) -> Image.Image:
    """Decode one image safely; raise :class:`ImageLoadError` with a per-file reason on any failure.

    ``draft_size`` (width, height), or a function of the declared (width, height) returning one: for JPEG
    files, ask the decoder (``Image.draft``) for the largest DCT reduction (1/2, 1/4, 1/8) whose result is
    still at least this size, so large JPEGs decode several times faster. Other formats ignore it. ``exif_transpose`` applies the EXIF orientation tag
    (``ImageOps.exif_transpose``). PIL images given directly are returned as they are (after the optional
    EXIF transpose): they are already decoded.
    """
    if isinstance(item, Image.Image):
        return ImageOps.exif_transpose(item) if exif_transpose else item
    _ensure_pillow_allows(max_pixels)
    if isinstance(item, (bytes, bytearray, memoryview)):
        if len(item) == 0:
            raise ImageLoadError(item, "empty file")
        return _decode(io.BytesIO(item), item, max_pixels, draft_size, exif_transpose)
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        try:
            with open(path, "rb") as f:
                if os.fstat(f.fileno()).st_size == 0:
                    raise ImageLoadError(item, "empty file")
                return _decode(f, item, max_pixels, draft_size, exif_transpose)
        except FileNotFoundError:
            raise ImageLoadError(item, "no such file") from None
        except IsADirectoryError:
            raise ImageLoadError(item, "is a directory, not an image file") from None
        except PermissionError:
            raise ImageLoadError(item, "permission denied") from None
        except ImageLoadError:
            raise
        except OSError as e:  # pragma: no cover - unusual filesystem errors
            raise ImageLoadError(item, f"cannot read file ({e.strerror or e})") from None
    raise ImageLoadError(item, f"unsupported input type {type(item).__name__} (give a path, bytes or a PIL image)")


def _decode(fp: Any, item: Any, max_pixels: int | None, draft_size, exif_transpose: bool) -> Image.Image:
    try:
        im = Image.open(fp)
    except Image.DecompressionBombError as e:
        raise ImageLoadError(item, f"too many pixels, refused before decoding ({e}); raise max_pixels to allow it") from None
    except UnidentifiedImageError:
        raise ImageLoadError(item, "not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageLoadError(item, f"corrupt image header ({e})") from None
    try:
        check_pixels(im.size[0], im.size[1], max_pixels, item)
        if draft_size is not None and im.format == "JPEG":
            want = draft_size(*im.size) if callable(draft_size) else draft_size
            if want is not None:
                im.draft(None, (int(want[0]), int(want[1])))
        try:
            im.load()
        except Image.DecompressionBombError as e:
            raise ImageLoadError(item, f"too many pixels: {e}") from None
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct_error) as e:
            msg = str(e) or type(e).__name__
            raise ImageLoadError(item, f"truncated or corrupt image data ({msg})") from None
        except MemoryError:
            raise ImageLoadError(item, "not enough memory to decode this image") from None
        # Some plugins only learn the real size while decoding (e.g. ICO / multi-resolution formats).
        check_pixels(im.size[0], im.size[1], max_pixels, item)
        if exif_transpose:
            try:
                im = ImageOps.exif_transpose(im)
            except Exception as e:  # malformed EXIF must not kill the image
                log.debug("ignoring malformed EXIF orientation in %s: %s", describe_item(item), e)
        return im
    except BaseException:
        im.close()
        raise


# Decoding of truncated files must fail (never silently pad with grey), whatever a caller set globally.
if ImageFile.LOAD_TRUNCATED_IMAGES:  # pragma: no cover - only when someone flipped the global
    log.warning("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set: truncated images will be padded, not refused")
