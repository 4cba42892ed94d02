"""Class names from a dataset folder (training needs the names only, never the images).

Layouts: ``<root>/<domain>/<class>/<image>`` (PACS, Office-Home, DomainNet) and ``<root>/<class>/<image>``,
either one optionally under ``<root>/images/``. Only folders that hold images count, so stray folders
(notes, splits) never become classes. The two-level reader is the benchmarks' dataset reader.
"""
from __future__ import annotations

import os
from pathlib import Path

#: Environment variable naming the default PACS image folder (``<domain>/<class>/<image>``).
DATASET_ENV = "TKI_PACS_DIR"
#: The PACS copy in a ``shared`` folder beside the repository checkout.
REPO_PACS_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pacs" / "images"


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
