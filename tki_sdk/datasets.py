"""Class names from a dataset folder (training needs the names only, never the images).

Layouts: ``<root>/<domain>/<class>/<image>`` (PACS, Office-Home, DomainNet) and ``<root>/<class>/<image>``,
either one optionally under ``<root>/images/``. Only folders that hold images count, so stray folders
(notes, splits) never become classes. The two-level reader is the benchmarks' dataset reader.
"""
from __future__ import annotations

import os
from pathlib import Path


def discover_classes(root: str | os.PathLike) -> list[str]:
    """Sorted class names of a dataset folder (union over domains)."""
    from .benchmarks.datasets import IMAGE_EXTENSIONS, DomainDataset

    r = Path(root)
    if not r.is_dir():
        raise FileNotFoundError(f"dataset folder {r} does not exist")
    try:
        return list(DomainDataset(r).classes)
    except ValueError:
        pass
    for base in (r, r / "images"):
        if not base.is_dir():
            continue
        flat = sorted(
            d.name for d in base.iterdir()
            if d.is_dir() and not d.name.startswith(".")
            and any(f.suffix.lower() in IMAGE_EXTENSIONS for f in d.iterdir() if f.is_file())
        )
        if flat:
            return flat
    raise ValueError(f"no class folders with images under {r}; expected <domain>/<class>/<image> or <class>/<image>")
