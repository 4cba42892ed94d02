"""Real images for int8 calibration and parity checks, through the model's exact preprocessing.

Images are read with :class:`tki_sdk.runtime.engine.preprocess.Preprocessor` built from the model's own
preprocessing config (the one written to ``tki.json``), which equals open_clip's eval transform, so
calibration sees exactly the tensors the runtime will feed. Unreadable files are skipped and counted.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tki_sdk.common.imagefolders import (
    IMAGE_SUFFIXES,
    REPO_PACS_DIR,
    default_dataset_source,
    list_images,
)
from tki_sdk.common.model_metadata import PreprocessConfig

__all__ = ["IMAGE_EXTENSIONS", "DEFAULT_PACS_DIR", "ImageSet", "NoImagesError", "find_images", "load_images", "default_image_dir",
           "default_image_source"]

IMAGE_EXTENSIONS = IMAGE_SUFFIXES  # the one set: what a gallery indexes, calibration reads
#: The PACS copy beside the repository (``../shared/data/pacs/images``); ``TKI_PACS_DIR`` overrides it.
DEFAULT_PACS_DIR = REPO_PACS_DIR


class NoImagesError(ValueError):
    """A folder holds no readable image."""


@dataclass
class ImageSet:
    """Preprocessed images ``pixels`` float32 ``[N,3,H,W]`` and where they came from."""

    pixels: np.ndarray
    files: list[str]
    source: str
    skipped: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "count": int(self.pixels.shape[0]), "skipped": len(self.skipped)}


def default_image_source() -> tuple[Path | None, str]:
    """The image folder used when ``--calib-images`` is not given, and where it came from:
    ``$TKI_PACS_DIR`` when set and a folder, else (variable unset) the PACS copy beside the repository
    (:data:`DEFAULT_PACS_DIR`) when it exists, else ``(None, reason)``: the export then uses generated images
    and says why (:func:`tki_sdk.common.imagefolders.default_dataset_source`)."""
    folder, origin = default_dataset_source(DEFAULT_PACS_DIR)
    return (folder, origin) if folder is not None else (None, f"no --calib-images, {origin}")


def default_image_dir() -> Path | None:
    """``$TKI_PACS_DIR`` or the PACS copy beside the repository, when it exists (see :func:`default_image_source`)."""
    return default_image_source()[0]


def find_images(folder: str | os.PathLike, count: int | None = None, seed: int = 0) -> list[Path]:
    """Image files under ``folder`` (recursive, by extension, hidden entries skipped), sorted; when more than
    ``count``, a seeded random sample of ``count`` (returned sorted), so every sub-folder (domain, class) is
    likely represented. Raises :class:`NoImagesError` / ``FileNotFoundError`` with one line."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a folder")
    files = [f.path for f in list_images(root)]
    if not files:
        raise NoImagesError(
            f"{root} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); point --calib-images at a folder of images"
        )
    if count is not None and len(files) > count:
        files = sorted(random.Random(seed).sample(files, int(count)))
    return files


def load_images(
    folder: str | os.PathLike, preprocess_cfg: dict[str, Any], count: int | None = None, seed: int = 0
) -> ImageSet:
    """Find up to ``count`` images under ``folder`` and preprocess them as the runtime does."""
    from tki_sdk.runtime.engine.images import ImageLoadError
    from tki_sdk.runtime.engine.preprocess import Preprocessor

    pre = Preprocessor(PreprocessConfig.from_dict(preprocess_cfg))
    files = find_images(folder, count=None, seed=seed)
    rng = random.Random(seed)
    order = files if count is None or len(files) <= count else rng.sample(files, len(files))
    h, w = pre.size
    want = len(order) if count is None else min(int(count), len(order))
    out = np.empty((want, 3, h, w), dtype=np.float32)
    kept: list[str] = []
    skipped: list[str] = []
    for f in order:
        if len(kept) == want:
            break
        try:
            pre.process(f, out=out[len(kept)])
        except ImageLoadError as e:
            skipped.append(f"{f}: {e.reason}")
            continue
        kept.append(str(f))
    if not kept:
        raise NoImagesError(f"none of the {len(files)} images under {folder} could be read (first: {skipped[0]})")
    return ImageSet(out[: len(kept)], kept, str(folder), skipped)
