"""CLIP-exact image preprocessing without torch.

:class:`Preprocessor` reproduces open_clip's eval transform (``open_clip.image_transform_v2(cfg,
is_train=False)``) on PIL images, step for step, so the exported model sees the same tensor it would
see in the training framework:

1. **resize**, in the image's own mode (as torchvision does on PIL images, before any RGB conversion):

   - ``shortest`` with a square target ``S``: torchvision ``Resize(S)``: the short edge becomes ``S``, the
     long edge ``int(S * long / short)``; skipped when the size already matches.
   - ``shortest`` with a non-square target ``(H, W)``: open_clip's ``ResizeKeepRatio((H, W))``:
     ``ratio = min(h / H, w / W)``, new size ``(round(h / ratio), round(w / ratio))``. open_clip builds this
     one without passing the interpolation, so it is always **bicubic**; reproduced as such.
   - ``longest``: ``ResizeKeepRatio`` with ``ratio = max(h / H, w / W)`` and the configured interpolation.
   - ``squash``: resize straight to ``(H, W)``.

   The resampling itself is PIL's ``Image.resize`` with the same filter (torchvision's ``F.resize`` calls it
   on PIL images): ``bicubic`` -> ``Image.BICUBIC``, ``bilinear`` -> ``Image.BILINEAR`` (``nearest`` is
   accepted as an extension; open_clip itself rejects it).
2. **center crop** to ``(H, W)``: when the image is smaller than the crop it is first padded (left/top get
   ``(c - s) // 2``, right/bottom ``(c - s + 1) // 2``) with ``ImageOps.expand`` in the image's own mode
   (fill ``0``; ``fill_color`` in ``longest`` mode, as open_clip's ``CenterCropOrPad``), then cropped at
   ``top = int(round((h - H) / 2))``, ``left = int(round((w - W) / 2))``.
3. **RGB**: ``image.convert("RGB")`` (open_clip's ``_convert_to_rgb``), whatever the source mode -- except
   16-bit grey holding a value above 255, which is first scaled to 8 bits, ``round(v * 255 / 65535)``
   (:func:`~tki_sdk.runtime.engine.images.to_8bit`; open_clip clips it to white). ``I`` / ``I;16`` images
   whose values fit in 8 bits are not scaled: they follow open_clip exactly (resized in their own mode).
4. **scale and normalise**: ``x = (u8 / 255 - mean[c]) / std[c]`` in float32, channels first.
   Computed through a 256-entry float32 table per channel, built with exactly that float32 arithmetic.

Pathologically elongated images whose full resize would exceed :data:`MAX_RESIZE_PIXELS` pixels (a 1 x 60000
strip resized to 224 x 13,440,000) resize only the region the crop keeps (``Image.resize(..., box=...)``)
instead of allocating gigabytes; this one case is close to, not bit-equal with, open_clip (Pillow rounds
the box to float32). Every other image follows open_clip exactly.

Options that deliberately depart from open_clip (all off by default):

- ``exif_transpose=True``: apply the EXIF orientation tag before anything else.
- ``draft=True``: decode JPEGs with ``Image.draft`` at the largest DCT reduction (1/2, 1/4, 1/8) that still
  leaves at least the resize output size, i.e. only when the file is at least twice that size. Several
  times faster on large photos; slightly different pixels (the benchmarks report the accuracy cost).
- ``max_pixels``: decompression-bomb limit for files this preprocessor opens (see :mod:`.images`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image, ImageOps

from tki_sdk.runtime.engine.images import DEFAULT_MAX_PIXELS, ImageItem, ImageLoadError, load_image, to_8bit
from tki_sdk.common.model_metadata import ModelMetadata, PreprocessConfig

__all__ = ["Preprocessor", "MAX_RESIZE_PIXELS"]

#: Largest intermediate (resized, before crop) image built in full; beyond it only the cropped region is resized.
MAX_RESIZE_PIXELS = 1 << 25

_FILTERS = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}


@dataclass(frozen=True)
class _Plan:
    """Geometry for one input size: resize to ``resize`` (w, h) or not, pad, then crop box."""

    resize: tuple[int, int] | None  # (w, h) of the resized image, None = keep the size
    filter: int
    pad: tuple[int, int, int, int] | None  # (left, top, right, bottom)
    fill: int
    crop: tuple[int, int, int, int] | None  # (left, top, right, bottom) box on the padded image


class Preprocessor:
    """open_clip's eval preprocessing as numpy + Pillow: PIL image -> float32 ``[3, H, W]``.

    Build it from an export (``Preprocessor.from_metadata("export_dir")``) or a
    :class:`~tki_sdk.common.model_metadata.PreprocessConfig`. Calling it on a PIL image returns the model
    input; :meth:`load` opens a path / bytes safely (with the options below), :meth:`process` does both,
    :meth:`batch` stacks several into ``[N, 3, H, W]``. Thread-safe (no mutable state).
    """

    def __init__(
        self,
        config: PreprocessConfig | None = None,
        *,
        exif_transpose: bool = False,
        draft: bool = False,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        cfg = config or PreprocessConfig()
        if cfg.mode != "RGB":
            raise ValueError(f"preprocess mode {cfg.mode!r} is not supported (open_clip only produces 'RGB')")
        if cfg.resize_mode not in ("shortest", "longest", "squash"):
            raise ValueError(f"resize_mode {cfg.resize_mode!r} unknown; expected shortest, longest or squash")
        interp = "bicubic" if cfg.interpolation == "random" else cfg.interpolation
        if interp not in _FILTERS:
            raise ValueError(f"interpolation {cfg.interpolation!r} unknown; expected bicubic or bilinear")
        if len(cfg.mean) != 3 or len(cfg.std) != 3:
            raise ValueError("preprocess mean and std need 3 values (one per RGB channel)")
        self.config = cfg
        self.size: tuple[int, int] = (int(cfg.size[0]), int(cfg.size[1]))  # (H, W)
        self.filter = _FILTERS[interp]
        self.exif_transpose = bool(exif_transpose)
        self.draft = bool(draft)
        self.max_pixels = max_pixels
        # (u8 / 255 - mean) / std, elementwise in float32, as ToTensor + Normalize compute it.
        levels = np.arange(256, dtype=np.float32) / np.float32(255.0)
        mean = np.asarray(cfg.mean, dtype=np.float32)
        std = np.asarray(cfg.std, dtype=np.float32)
        self._lut = np.stack([(levels - mean[c]) / std[c] for c in range(3)]).astype(np.float32)
        self._lut.setflags(write=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_metadata(
        cls,
        meta: str | os.PathLike | ModelMetadata | PreprocessConfig | dict[str, Any],
        **options: Any,
    ) -> "Preprocessor":
        """From an export folder / ``tki.json`` path, a :class:`ModelMetadata`, a :class:`PreprocessConfig`,
        or a dict (a whole ``tki.json`` dict or just its ``preprocess`` part). ``options`` go to ``__init__``."""
        if isinstance(meta, (str, os.PathLike)):
            meta = ModelMetadata.load(Path(meta))
        if isinstance(meta, ModelMetadata):
            cfg = meta.preprocess
        elif isinstance(meta, PreprocessConfig):
            cfg = meta
        elif isinstance(meta, dict):
            cfg = PreprocessConfig.from_dict(meta["preprocess"] if "preprocess" in meta else meta)
        else:
            raise TypeError(f"cannot build a Preprocessor from {type(meta).__name__}")
        return cls(cfg, **options)

    def __repr__(self) -> str:
        c = self.config
        return (
            f"Preprocessor(size={self.size}, resize_mode={c.resize_mode!r}, interpolation={c.interpolation!r}, "
            f"exif_transpose={self.exif_transpose}, draft={self.draft}, max_pixels={self.max_pixels})"
        )

    # ------------------------------------------------------------------ geometry
    def resize_size(self, width: int, height: int) -> tuple[int, int]:
        """(w, h) the resize step produces for an input of ``width x height`` (before crop / pad)."""
        th, tw = self.size
        h, w = int(height), int(width)
        mode = self.config.resize_mode
        if mode == "squash":
            return tw, th
        if mode == "shortest" and th == tw:
            # torchvision _compute_resized_output_size with size=[S]
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = th, int(th * long / short)
            return (new_short, new_long) if w <= h else (new_long, new_short)
        # open_clip ResizeKeepRatio: longest=1 for 'longest', 0 for non-square 'shortest'
        longest = 1.0 if mode == "longest" else 0.0
        ratio_h, ratio_w = h / th, w / tw
        ratio = max(ratio_h, ratio_w) * longest + min(ratio_h, ratio_w) * (1.0 - longest)
        nh, nw = round(h * 1.0 / ratio), round(w * 1.0 / ratio)
        # open_clip would fail on a 0-pixel edge (a 1000x7 image in 'longest' mode); keep one row instead
        return max(1, int(nw)), max(1, int(nh))

    def _plan(self, width: int, height: int) -> _Plan:
        th, tw = self.size
        mode = self.config.resize_mode
        nw, nh = self.resize_size(width, height)
        resize = None if (nw, nh) == (width, height) else (nw, nh)
        # open_clip's non-square 'shortest' path builds ResizeKeepRatio without an interpolation -> bicubic
        filt = Image.Resampling.BICUBIC if (mode == "shortest" and th != tw) else self.filter
        if mode == "squash":
            return _Plan(resize, filt, None, 0, None)
        fill = int(self.config.fill_color) if mode == "longest" else 0
        pad = None
        w, h = nw, nh
        if tw > w or th > h:
            pad = (
                (tw - w) // 2 if tw > w else 0,
                (th - h) // 2 if th > h else 0,
                (tw - w + 1) // 2 if tw > w else 0,
                (th - h + 1) // 2 if th > h else 0,
            )
            w, h = w + pad[0] + pad[2], h + pad[1] + pad[3]
            if (w, h) == (tw, th):
                return _Plan(resize, filt, pad, fill, None)
        top = int(round((h - th) / 2.0))
        left = int(round((w - tw) / 2.0))
        return _Plan(resize, filt, pad, fill, (left, top, left + tw, top + th))

    # ------------------------------------------------------------------ pixel work
    def to_rgb_image(self, image: Image.Image) -> Image.Image:
        """Resize, pad / crop and convert to RGB: the PIL image open_clip hands to ``ToTensor``."""
        if not isinstance(image, Image.Image):
            raise TypeError(f"expected a PIL image, got {type(image).__name__}; use Preprocessor.process for paths")
        image = to_8bit(image)  # 16-bit grey above 255 is scaled, not clipped to white by convert("RGB")
        if self.exif_transpose:
            image = ImageOps.exif_transpose(image)
        w, h = image.size
        if w <= 0 or h <= 0:
            raise ValueError(f"image has an empty size {w} x {h}")
        plan = self._plan(w, h)
        img = image
        th, tw = self.size
        if plan.resize is not None and plan.pad is None and plan.crop is not None and (
            plan.resize[0] * plan.resize[1] > MAX_RESIZE_PIXELS
        ):
            # Resize only the region that the crop keeps (near-identical taps, bounded memory).
            nw, nh = plan.resize
            sx, sy = w / nw, h / nh
            l, t, r, b = plan.crop
            img = img.resize((r - l, b - t), plan.filter, box=(l * sx, t * sy, r * sx, b * sy))
        else:
            if plan.resize is not None:
                img = img.resize(plan.resize, plan.filter)
            if plan.pad is not None:
                img = _pad(img, plan.pad, plan.fill)
            if plan.crop is not None:
                img = img.crop(plan.crop)
        return img.convert("RGB")

    def __call__(self, image: Image.Image, out: np.ndarray | None = None) -> np.ndarray:
        """PIL image -> float32 ``[3, H, W]`` (written into ``out`` when given)."""
        rgb = self.to_rgb_image(image)
        th, tw = self.size
        if rgb.size != (tw, th):  # pragma: no cover - guarded by the geometry above
            raise RuntimeError(f"internal error: got {rgb.size}, expected {(tw, th)}")
        if out is None:
            out = np.empty((3, th, tw), dtype=np.float32)
        # split() gives contiguous planes: table lookups on them are ~3x faster than on strided HWC views
        for c, band in enumerate(rgb.split()):
            np.take(self._lut[c], np.asarray(band), out=out[c])
        return out

    # ------------------------------------------------------------------ files
    def draft_size(self, width: int, height: int) -> tuple[int, int] | None:
        """Size to request from the JPEG decoder in draft mode (the resize output size), or None when off."""
        if not self.draft:
            return None
        nw, nh = self.resize_size(width, height)
        return max(1, nw), max(1, nh)

    def load(self, item: ImageItem) -> Image.Image:
        """Open a path / bytes / PIL image safely (``max_pixels``, optional draft and EXIF transpose).

        Raises :class:`~tki_sdk.runtime.engine.images.ImageLoadError` with a per-file reason.
        """
        # EXIF transpose happens in __call__ so that PIL images given directly get it too.
        return load_image(item, max_pixels=self.max_pixels, draft_size=self.draft_size if self.draft else None)

    def process(self, item: ImageItem, out: np.ndarray | None = None) -> np.ndarray:
        """Load (safely) and preprocess one item; raises ImageLoadError naming the item on failure."""
        image = self.load(item)
        try:
            return self(image, out=out)
        except ImageLoadError:
            raise
        except (OSError, ValueError, MemoryError) as e:
            raise ImageLoadError(item, f"cannot convert image ({e})") from None

    def batch(self, items: Sequence[ImageItem] | Iterable[ImageItem]) -> np.ndarray:
        """Preprocess several items into one float32 ``[N, 3, H, W]`` array (raises on the first bad item)."""
        items = list(items)
        th, tw = self.size
        out = np.empty((len(items), 3, th, tw), dtype=np.float32)
        for i, item in enumerate(items):
            self.process(item, out=out[i])
        return out


def _pad(img: Image.Image, ltrb: tuple[int, int, int, int], fill: int) -> Image.Image:
    """torchvision ``F.pad(img, ltrb, fill)`` on a PIL image (constant mode), in the image's own mode."""
    bands = len(img.getbands())
    color: Any = fill
    if bands > 1:
        color = tuple([fill] * bands)
    if img.mode != "F":
        color = tuple(int(x) for x in color) if isinstance(color, tuple) else int(color)
    if img.mode == "P":
        palette = img.getpalette()
        out = ImageOps.expand(img, border=ltrb, fill=color)
        out.putpalette(palette)
        return out
    return ImageOps.expand(img, border=ltrb, fill=color)
