"""Class names from a dataset folder, without reading any image (training needs names only).

Layouts: ``<root>/<domain>/<class>/<file>`` (PACS, Office-Home, DomainNet), ``<root>/<class>/<file>``,
and either under an ``images/`` folder (``<root>/images/<domain>/<class>/...``).
"""
from __future__ import annotations

import os
from pathlib import Path


def _subdirs(p: Path) -> list[Path]:
    return sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))


def discover_classes(root: str | os.PathLike) -> list[str]:
    """Sorted class folder names of a dataset folder (union over domains)."""
    r = Path(root)
    if not r.is_dir():
        raise FileNotFoundError(f"dataset folder {r} does not exist")
    level = _subdirs(r)
    if [d.name for d in level] == ["images"]:
        level = _subdirs(level[0])
    if not level:
        raise ValueError(f"{r} has no sub-folders; expected <domain>/<class>/ or <class>/ folders")
    two_level = all(_subdirs(d) for d in level)
    if two_level:
        return sorted({c.name for d in level for c in _subdirs(d)})
    return [d.name for d in level]
