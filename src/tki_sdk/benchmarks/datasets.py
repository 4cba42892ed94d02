"""Domain / class image folders (PACS, Office-Home, DomainNet) and the cross-domain protocol.

Layouts read (the first that holds domain folders wins):

* ``<root>/<domain>/<class>/<file>`` (Office-Home, DomainNet, most PACS copies)
* ``<root>/images/<domain>/<class>/<file>`` (the PACS copy in ``data/pacs``)

A domain is a folder holding class folders that hold image files (extensions in
:data:`IMAGE_EXTENSIONS`, case-insensitive; hidden files and folders are skipped).
Classes are the sorted union of class-folder names over all domains and share one
index across domains (``label = classes.index(name)``), so a label means the same class
in every domain even when a domain lacks some class. Files are listed in sorted order,
so everything here is deterministic.

The paper's three datasets in their published layouts (:func:`read_dataset`):

* ``pacs``: the folder layouts above (``<root>[/images]/<domain>/<class>/<file>``);
* ``officehome``: ``OfficeHomeDataset_10072016/{Art,Clipart,Product,Real World}/<Class>/<file>`` (``root`` is
  that folder or the one holding it; ``ImageInfo.csv`` and the other top-level files are ignored);
* ``domainnet``: ``<root>/<domain>/<class>/<file>`` for the six domains with the official split lists
  ``<root>/<domain>_{train,test}.txt`` (lines ``<domain>/<class>/<file> <label>``); ``split`` ``test`` /
  ``train`` reads the listed images only, ``all`` every image in the folders.

Cross-domain protocol (the paper's): for every ordered pair ``(query domain q, gallery
domain g)`` with ``q != g``, every image of ``q`` is searched against every image of ``g``;
a gallery image is relevant when its class equals the query's.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tki_sdk.common.imagefolders import DATASET_ENV, IMAGE_SUFFIXES, default_dataset_dir, list_images

__all__ = [
    "IMAGE_EXTENSIONS", "ImageRecord", "DomainDataset", "cross_domain_pairs", "find_dataset_root",
    "default_dataset_dir", "DATASET_ENV", "dataset_dir", "PAPER_DATASETS", "DOMAINNET_DOMAINS",
    "OFFICE_HOME_DOMAINS", "DOMAINNET_SPLITS", "read_dataset",
]

#: ``--dataset`` values and the paper's name of each.
PAPER_DATASETS = {"pacs": "PACS", "officehome": "Office-Home", "domainnet": "DomainNet"}
#: Office-Home's domain folders, in the paper's order (A, C, P, R).
OFFICE_HOME_DOMAINS = ("Art", "Clipart", "Product", "Real World")
#: DomainNet's domain folders, in the order of the paper's Tables 2 and 7.
DOMAINNET_DOMAINS = ("real", "sketch", "quickdraw", "infograph", "painting", "clipart")
DOMAINNET_SPLITS = ("test", "train", "all")

#: Suffixes of the files a dataset holds: the one set (``tki_sdk.common.imagefolders.IMAGE_SUFFIXES``).
IMAGE_EXTENSIONS = IMAGE_SUFFIXES


@dataclass(frozen=True)
class ImageRecord:
    """One image: its path, domain, class name and the shared class index."""

    path: Path
    domain: str
    class_name: str
    label: int


def dataset_dir(given: Path | None, required_by: str | None = None) -> Path | None:
    """The image folder a suite reads: ``given`` (``--dataset-dir``) when set, else the default location
    (:func:`tki_sdk.common.imagefolders.default_dataset_dir`: ``$TKI_PACS_DIR``, else PACS beside the
    repository). None when there is none, unless ``required_by`` names the suite: then a one-line
    :class:`~tki_sdk.common.errors.UsageError` saying how to give one."""
    if given is not None:
        return Path(given)
    found = default_dataset_dir()
    if found is None and required_by is not None:
        from tki_sdk.common.errors import UsageError

        raise UsageError(f"{required_by} needs images: pass --dataset-dir <root>/<domain>/<class>/<image> "
                         f"or set {DATASET_ENV} to such a folder")
    return found


def _visible_dirs(p: Path) -> list[Path]:
    return sorted(c for c in p.iterdir() if c.is_dir() and not c.name.startswith("."))


def _image_files(p: Path) -> list[Path]:
    """Image files directly inside ``p`` (the common walker, one level)."""
    return [f.path for f in list_images(p) if "/" not in f.rel]


def _is_domain_dir(p: Path) -> bool:
    """A domain folder holds at least one class folder with at least one image."""
    return any(_image_files(c) for c in _visible_dirs(p))


def find_dataset_root(root: str | Path) -> Path:
    """The folder whose children are domain folders: ``root`` itself or ``root/images``.

    Raises ``FileNotFoundError`` / ``ValueError`` with one line saying what layout is expected.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist; expected <root>/<domain>/<class>/<image>")
    for cand in (root, root / "images"):
        if cand.is_dir() and any(_is_domain_dir(d) for d in _visible_dirs(cand)):
            return cand
    raise ValueError(
        f"no domain folders under {root}: expected <root>/<domain>/<class>/<image> or "
        f"<root>/images/<domain>/<class>/<image> (image extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})"
    )


def _stable_seed(*parts: object) -> int:
    """A seed derived from the parts by SHA-256 (independent of Python's hash randomisation)."""
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little")


class DomainDataset:
    """The images of a domain/class folder tree.

    >>> ds = DomainDataset("data/pacs")           # doctest: +SKIP
    >>> ds.domains, ds.classes                     # doctest: +SKIP
    (['art_painting', 'cartoon', 'photo', 'sketch'], ['dog', 'elephant', ...])
    >>> small = ds.sample(10, seed=0)              # 10 images per (domain, class)  # doctest: +SKIP
    >>> for q, g in small.pairs(): ...             # ordered cross-domain pairs   # doctest: +SKIP
    """

    def __init__(
        self,
        root: str | Path,
        domains: Sequence[str] | None = None,
        *,
        _records: Sequence[ImageRecord] | None = None,
        _classes: Sequence[str] | None = None,
        _domains: Sequence[str] | None = None,
    ) -> None:
        if _records is not None:  # internal: a subset of an existing dataset
            self.root = Path(root)
            self.classes = list(_classes or [])
            self.domains = list(_domains or [])
            self._records = list(_records)
            return
        self.root = find_dataset_root(root)
        domain_dirs = [d for d in _visible_dirs(self.root) if _is_domain_dir(d)]
        all_domains = [d.name for d in domain_dirs]
        if domains is not None:
            unknown = [d for d in domains if d not in all_domains]
            if unknown:
                raise ValueError(f"unknown domain(s) {unknown} in {self.root}; available: {all_domains}")
            domain_dirs = [d for d in domain_dirs if d.name in set(domains)]
        files: list[tuple[str, str, Path]] = []
        classes: set[str] = set()
        for ddir in domain_dirs:
            for cdir in _visible_dirs(ddir):
                imgs = _image_files(cdir)
                if imgs:
                    classes.add(cdir.name)
                    files.extend((ddir.name, cdir.name, f) for f in imgs)
        self.domains = [d.name for d in domain_dirs]
        self.classes = sorted(classes)
        index = {c: i for i, c in enumerate(self.classes)}
        self._records = [ImageRecord(f, d, c, index[c]) for d, c, f in files]

    # -- listing ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._records)

    def __repr__(self) -> str:
        counts = ", ".join(f"{d}={n}" for d, n in self.counts().items())
        return f"DomainDataset({str(self.root)!r}, {len(self.classes)} classes, {counts})"

    def records(self, domain: str | None = None) -> list[ImageRecord]:
        """All records (sorted by domain, class, file name), or those of one domain."""
        if domain is None:
            return list(self._records)
        self._check_domain(domain)
        return [r for r in self._records if r.domain == domain]

    def paths(self, domain: str) -> list[Path]:
        """Image paths of one domain, in record order."""
        return [r.path for r in self.records(domain)]

    def labels(self, domain: str) -> np.ndarray:
        """Shared class indices (int64) of one domain's images, aligned with :meth:`paths`."""
        return np.array([r.label for r in self.records(domain)], dtype=np.int64)

    def counts(self) -> dict[str, int]:
        """Number of images per domain."""
        out = {d: 0 for d in self.domains}
        for r in self._records:
            out[r.domain] += 1
        return out

    def class_counts(self, domain: str) -> dict[str, int]:
        """Number of images per class in one domain (classes absent from it are 0)."""
        out = {c: 0 for c in self.classes}
        for r in self.records(domain):
            out[r.class_name] += 1
        return out

    def pairs(self) -> list[tuple[str, str]]:
        """Ordered ``(query, gallery)`` domain pairs of the cross-domain protocol (``q != g``)."""
        return cross_domain_pairs(self.domains)

    def _check_domain(self, domain: str) -> None:
        if domain not in self.domains:
            raise ValueError(f"unknown domain {domain!r}; available: {self.domains}")

    # -- subsets ---------------------------------------------------------------------------
    def subset(self, domains: Iterable[str]) -> "DomainDataset":
        """The same dataset restricted to some domains (class index unchanged)."""
        keep = list(domains)
        for d in keep:
            self._check_domain(d)
        recs = [r for r in self._records if r.domain in set(keep)]
        return DomainDataset(self.root, _records=recs, _classes=self.classes, _domains=[d for d in self.domains if d in keep])

    def sample(self, n_per_class: int | None, seed: int = 0) -> "DomainDataset":
        """At most ``n_per_class`` images of every (domain, class), chosen without replacement.

        Deterministic: the choice for one (domain, class) depends only on ``seed``, the
        domain and class names and that folder's sorted file list, so adding a domain or
        a class elsewhere does not change it. Kept images stay in sorted order.
        ``None`` (or a count >= the folder's size) keeps everything.
        """
        if n_per_class is not None and n_per_class < 1:
            raise ValueError(f"n_per_class must be >= 1 or None, got {n_per_class}")
        groups: dict[tuple[str, str], list[ImageRecord]] = {}
        for r in self._records:
            groups.setdefault((r.domain, r.class_name), []).append(r)
        kept: list[ImageRecord] = []
        for (domain, cls), recs in groups.items():
            if n_per_class is None or len(recs) <= n_per_class:
                kept.extend(recs)
                continue
            rng = np.random.default_rng(_stable_seed(seed, domain, cls))
            idx = np.sort(rng.choice(len(recs), size=n_per_class, replace=False))
            kept.extend(recs[i] for i in idx)
        return DomainDataset(self.root, _records=kept, _classes=self.classes, _domains=self.domains)


def cross_domain_pairs(domains: Sequence[str]) -> list[tuple[str, str]]:
    """Every ordered ``(query, gallery)`` pair of distinct domains, query-major, in the given order."""
    return [(q, g) for q in domains for g in domains if q != g]


def read_dataset(name: str, root: str | Path, *, split: str = "test") -> "DomainDataset":
    """One of the paper's datasets (``pacs``, ``officehome``, ``domainnet``) from its published layout (module
    docstring). ``split`` applies to DomainNet only. Raises ``FileNotFoundError`` / ``ValueError`` with one line
    saying what is missing."""
    if name not in PAPER_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(PAPER_DATASETS)}")
    root = Path(root).expanduser()
    if name == "pacs":
        return DomainDataset(root)
    if name == "officehome":
        top = root / "OfficeHomeDataset_10072016" if (root / "OfficeHomeDataset_10072016").is_dir() else root
        missing = [d for d in OFFICE_HOME_DOMAINS if not (top / d).is_dir()]
        if missing:
            raise ValueError(f"{top} is not Office-Home: no {', '.join(missing)} folder(s); expected "
                             f"OfficeHomeDataset_10072016/{{{','.join(OFFICE_HOME_DOMAINS)}}}/<Class>/<image>")
        ds = DomainDataset(top, domains=list(OFFICE_HOME_DOMAINS))
        return ds.subset(OFFICE_HOME_DOMAINS) if ds.domains != list(OFFICE_HOME_DOMAINS) else ds
    return _read_domainnet(root, split)


def _read_domainnet(root: Path, split: str) -> "DomainDataset":
    if split not in DOMAINNET_SPLITS:
        raise ValueError(f"DomainNet split must be one of {', '.join(DOMAINNET_SPLITS)}, got {split!r}")
    if not root.is_dir():
        raise FileNotFoundError(f"DomainNet folder {root} does not exist; expected <root>/<domain>/<class>/<image>")
    present = [d for d in DOMAINNET_DOMAINS if (root / d).is_dir()]
    if len(present) < 2:
        raise ValueError(f"{root} holds {len(present)} of DomainNet's domain folders ({', '.join(DOMAINNET_DOMAINS)});"
                         " cross-domain retrieval needs at least 2")
    if split == "all":
        ds = DomainDataset(root, domains=present)
        return DomainDataset(ds.root, _records=ds.records(), _classes=ds.classes, _domains=present)
    lists = {d: root / f"{d}_{split}.txt" for d in present}
    absent = [p.name for p in lists.values() if not p.is_file()]
    if absent:
        raise ValueError(f"no DomainNet {split} split list {', '.join(absent)} in {root}: put the official "
                         f"<domain>_{split}.txt files there, or pass --split all to read every image")
    entries: list[tuple[str, str, Path, int]] = []
    label_of: dict[str, int] = {}
    for d, lst in lists.items():
        for n, line in enumerate(lst.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split()
            rel, label = " ".join(parts[:-1]), parts[-1]
            bits = rel.split("/")
            if len(parts) < 2 or not label.isdigit() or len(bits) != 3 or bits[0] != d:
                raise ValueError(f"{lst}:{n}: expected '{d}/<class>/<file> <label>', got {line.strip()!r}")
            path = root / rel
            if not path.is_file():
                raise ValueError(f"{lst}:{n}: {rel} is listed but not in {root}; the images and the list must "
                                 "come from the same release")
            if label_of.setdefault(bits[1], int(label)) != int(label):
                raise ValueError(f"{lst}:{n}: class {bits[1]} has label {label} here and {label_of[bits[1]]} "
                                 "elsewhere; the split lists disagree")
            entries.append((d, bits[1], path, int(label)))
    classes = sorted(label_of)
    index = {c: i for i, c in enumerate(classes)}
    records = [ImageRecord(p, d, c, index[c]) for d, c, p, _ in entries]
    domains = [d for d in present if any(r.domain == d for r in records)]
    return DomainDataset(root, _records=records, _classes=classes, _domains=domains)
