"""Safe image decoding for the runtime: one bad file gives one clear error, never a crash or a huge allocation.

``load_image(item)`` accepts a path (``str`` / ``os.PathLike``), raw encoded ``bytes`` / ``bytearray`` /
``memoryview``, or an already-open ``PIL.Image.Image``, and returns a fully decoded PIL image (pixels read,
file closed). Every failure is an :class:`ImageLoadError` whose ``reason`` says what is wrong with that one
file:

- ``empty file``
- ``not an image (unrecognised format)``
- ``truncated or corrupt image data (...)``
- ``too many pixels: W x H = N > max_pixels M (...)`` -- refused from the header alone, before any
  pixel buffer is allocated (decompression-bomb guard); a header beyond Pillow's own hard limit reads
  ``too many pixels: N > max_pixels M, refused before decoding (...)``, still quoting the caller's ``M``
- ``truncated or corrupt image data (PNG pixel data ends after R of H rows)`` -- a PNG whose compressed
  data ends cleanly but early, which Pillow alone pads with black without a word
- ``not a regular file (a FIFO)`` / ``(a socket)`` / ``(a device)`` -- refused from ``fstat`` of a
  non-blocking open, before any byte is read (a FIFO would block the reader forever)
- ``no such file`` / ``is a directory`` / ``cannot read file (...)``

16-bit images (modes ``I;16*`` and ``I``) holding a value above 255 are scaled to 8 bits,
``round(v * 255 / 65535)``, and returned as ``L``: ``convert("RGB")`` alone clips them to white; wide-mode
images whose values fit in 8 bits are left as they are, as open_clip handles them
(:func:`to_8bit`; :class:`~tki_sdk.runtime.engine.preprocess.Preprocessor` applies it to PIL images given directly).
Truncated images are always refused: ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is never consulted as a reason
to pad.

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
import re
import stat
import struct
import threading
import zlib
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
        item = to_8bit(item)
        return ImageOps.exif_transpose(item) if exif_transpose else item
    _ensure_pillow_allows(max_pixels)
    if isinstance(item, (bytes, bytearray, memoryview)):
        if len(item) == 0:
            raise ImageLoadError(item, "empty file")
        return _decode(io.BytesIO(item), item, max_pixels, draft_size, exif_transpose)
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        try:
            with _open_regular(path, item) as f:
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
        except OSError as e:  # a symbolic link loop, an I/O error, ...
            raise ImageLoadError(item, f"cannot read file ({e.strerror or e})") from None
    raise ImageLoadError(item, f"unsupported input type {type(item).__name__} (give a path, bytes or a PIL image)")


def _open_regular(path: Path, item: Any) -> Any:
    """Open ``path`` for reading without blocking, and refuse anything but a regular file before reading."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(21, "Is a directory", str(path))
        if not stat.S_ISREG(mode):
            kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
                    else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
            raise ImageLoadError(item, f"not a regular file ({kind}); refusing to read it")
        if hasattr(os, "O_NONBLOCK"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def to_8bit(im: Image.Image) -> Image.Image:
    """16-bit grey holding a value above 255 -> ``L``, ``round(v * 255 / 65535)`` (values clipped to
    0..65535 first); every other image is returned unchanged.

    Wide grey modes (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``, ``I``) whose values all fit in 0..255 are
    left as they are: open_clip resizes them in their own mode and then converts to RGB, which is correct
    for them, so the runtime does the same (equal to open_clip to float32 rounding). Only images with a
    value above 255 depart from open_clip, whose ``convert("RGB")`` would clip them to white. An ``I``
    image with negative values but none above 255 is also unchanged (open_clip clips them to 0).
    Pillow reads 16-bit RGB files as 8-bit RGB itself."""
    if im.mode.startswith("I;16") or im.mode == "I":
        import numpy as np

        a = np.asarray(im)
        if a.size == 0 or int(a.max()) <= 255:
            return im
        a = np.clip(a.astype(np.int64), 0, 65535)
        return Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8), "L")
    return im


_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def png_rows_missing(fp: Any) -> tuple[int, int] | None:
    """``(rows decoded, rows declared)`` when a PNG's pixel data ends before its last row, else ``None``.

    Inflates the ``IDAT`` stream again (in 1 MB steps, nothing kept) and compares its length with what the
    header declares: ``height * (1 + ceil(width * bits / 8))`` bytes (Adam7: the sum over the 7 passes).
    Animated PNGs and files it cannot parse are left to Pillow (``None``).
    """
    fp.seek(0)
    if fp.read(8) != _PNG_SIG:
        return None
    inflate = zlib.decompressobj()
    produced = 0
    ihdr = None
    while True:
        head = fp.read(8)
        if len(head) < 8:
            break
        length, kind = struct.unpack(">I4s", head)
        if kind == b"IHDR":
            ihdr = fp.read(length)
            fp.seek(4, 1)
            continue
        if kind == b"acTL":
            return None
        if kind == b"IDAT":
            left = length
            while left:
                data = fp.read(min(left, 1 << 20))
                if not data:
                    break
                left -= len(data)
                chunk = inflate.decompress(data, 1 << 20)
                produced += len(chunk)
                while inflate.unconsumed_tail:
                    produced += len(inflate.decompress(inflate.unconsumed_tail, 1 << 20))
            fp.seek(4, 1)
            continue
        if kind == b"IEND":
            break
        fp.seek(length + 4, 1)
    if ihdr is None or len(ihdr) < 13:
        return None
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", ihdr[:13])
    bits = depth * _PNG_CHANNELS.get(color, 0)
    if not bits or not width or not height:
        return None

    def row_bytes(w: int) -> int:
        return 1 + (w * bits + 7) // 8

    if interlace:
        passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
        need = 0
        for x0, y0, dx, dy in passes:
            pw, ph = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
            if pw and ph:
                need += ph * row_bytes(pw)
        if produced >= need:
            return None
        return int(produced * height // need), height  # rows of the final image, approximately
    need = height * row_bytes(width)
    if produced >= need:
        return None
    return produced // row_bytes(width), height


_PILLOW_SIZE = re.compile(r"\((\d+) pixels\)")


def _bomb_reason(e: Exception, max_pixels: int | None) -> str:
    """The reason for a header Pillow's own guard refused, quoting the limit the caller set (``max_pixels``),
    not Pillow's (which only applies with ``max_pixels=None``)."""
    m = _PILLOW_SIZE.search(str(e))
    n = f"{int(m.group(1)):,}" if m else "more"
    if max_pixels is None:
        hard = 2 * int(Image.MAX_IMAGE_PIXELS or DEFAULT_MAX_PIXELS)
        return (f"too many pixels: {n} > Pillow's limit {hard:,}, refused before decoding "
                "(possible decompression bomb; raise PIL.Image.MAX_IMAGE_PIXELS to allow it)")
    return (f"too many pixels: {n} > max_pixels {int(max_pixels):,}, refused before decoding "
            "(possible decompression bomb; raise max_pixels to allow it)")


def _decode(fp: Any, item: Any, max_pixels: int | None, draft_size, exif_transpose: bool) -> Image.Image:
    try:
        im = Image.open(fp)
    except Image.DecompressionBombError as e:
        raise ImageLoadError(item, _bomb_reason(e, max_pixels)) from None
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
            raise ImageLoadError(item, _bomb_reason(e, max_pixels)) from None
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct_error) as e:
            msg = str(e) or type(e).__name__
            raise ImageLoadError(item, f"truncated or corrupt image data ({msg})") from None
        except MemoryError:
            raise ImageLoadError(item, "not enough memory to decode this image") from None
        # Some plugins only learn the real size while decoding (e.g. ICO / multi-resolution formats).
        check_pixels(im.size[0], im.size[1], max_pixels, item)
        if im.format == "PNG":
            try:
                short = png_rows_missing(fp)
            except (OSError, ValueError, struct_error, zlib.error):
                short = None  # Pillow decoded it; a stream this check cannot parse is left to Pillow
            if short is not None:
                raise ImageLoadError(item, f"truncated or corrupt image data (PNG pixel data ends after {short[0]} "
                                           f"of {short[1]} rows)")
        im = to_8bit(im)
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
