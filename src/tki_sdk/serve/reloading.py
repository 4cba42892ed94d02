"""Live gallery: the loaded version, swapped atomically when the gallery folder's ``CURRENT`` changes.

A gallery folder names its live version in ``CURRENT`` (written by ``Gallery.save``, i.e. by ``tki embed``).
:class:`LiveGallery` holds one immutable :class:`GallerySnapshot` (gallery + version + facet counts). A
watcher thread reads ``CURRENT`` every ``interval_s`` seconds; when it names another version, the new
version is loaded completely (``Gallery.load``: into memory, nothing left open on the old files), checked
against the served model's fingerprint, and only then replaces the snapshot with one reference assignment.
A batch takes the snapshot once, so a request in flight finishes on the version it started with; the old
version is freed when its last batch is done. A version that fails to load or was built by another model
is logged and counted, and the service keeps the version it has.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tki_sdk.runtime import Gallery

from tki_sdk.serve.collaborators import GalleryLike

log = logging.getLogger(__name__)

__all__ = ["GallerySnapshot", "LiveGallery", "read_version"]

CURRENT_FILE = "CURRENT"
#: Metadata fields whose values /v1/info counts (the page offers them as filters).
FACETS = ("domain", "class")


def read_version(folder: Path) -> str:
    """Name of the live version of the gallery at ``folder`` (the text of ``CURRENT``; ``""`` for a bare
    version folder without one)."""
    cur = Path(folder) / CURRENT_FILE
    if not cur.is_file():
        return ""
    return cur.read_text().strip()


@dataclass(frozen=True)
class GallerySnapshot:
    """One loaded gallery version and what /v1/info reports about it."""

    gallery: GalleryLike
    version: str
    loaded_at: float
    facets: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Every metadata field name that some item of this version carries.
    fields: frozenset[str] = frozenset()

    @property
    def size(self) -> int:
        return len(self.gallery)


def _facet_counts(gallery: GalleryLike) -> tuple[dict[str, dict[str, int]], frozenset[str]]:
    """Value counts of the :data:`FACETS` fields, and the names of every metadata field, in one pass."""
    counts: dict[str, Counter] = {f: Counter() for f in FACETS}
    names: set[str] = set()
    keys = gallery.keys()
    for s in range(0, len(keys), 5000):
        for meta in gallery.get_metadata(keys[s : s + 5000]):
            names.update(meta or ())
            for f in FACETS:
                v = (meta or {}).get(f)
                if isinstance(v, (str, int, float, bool)):
                    counts[f][str(v)] += 1
    return {f: dict(sorted(c.items())) for f, c in counts.items() if c}, frozenset(names)


def load_snapshot(folder: Path, model_fingerprint: str | None) -> GallerySnapshot:
    """Load the live version of ``folder``; ``ModelMismatchError`` when another model built it."""
    for _ in range(3):  # a save may swap CURRENT between our read and the load: then read it again
        version = read_version(folder)
        gallery = Gallery.load(folder)
        if read_version(folder) == version:
            break
    gallery.check_model(model_fingerprint)
    facets, names = _facet_counts(gallery)
    return GallerySnapshot(gallery=gallery, version=version, loaded_at=time.time(), facets=facets, fields=names)


class LiveGallery:
    """The current :class:`GallerySnapshot`, reloaded from ``folder`` when its ``CURRENT`` changes."""

    def __init__(
        self,
        folder: Path,
        model_fingerprint: str | None,
        *,
        interval_s: float,
        on_reload: Callable[[GallerySnapshot], None] | None = None,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.model_fingerprint = model_fingerprint
        self.interval_s = float(interval_s)
        self._on_reload = on_reload
        self._on_failure = on_failure
        self.snapshot = load_snapshot(self.folder, model_fingerprint)
        self._failed_version: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.interval_s > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="tki-gallery-watch", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def check_now(self) -> bool:
        """Reload when ``CURRENT`` names another version; True when the snapshot was replaced."""
        try:
            version = read_version(self.folder)
        except OSError as e:
            self._fail(f"cannot read {self.folder / CURRENT_FILE}: {e}")
            return False
        if version == self.snapshot.version or version == self._failed_version:
            return False
        try:
            snap = load_snapshot(self.folder, self.model_fingerprint)
        except Exception as e:  # noqa: BLE001 - any failure keeps the version being served
            self._failed_version = version
            self._fail(f"gallery version {version} not loaded, still serving {self.snapshot.version}: {e}")
            return False
        self._failed_version = None
        self.snapshot = snap  # the swap: one reference assignment
        log.info("gallery reloaded: version %s, %d items", snap.version, snap.size)
        if self._on_reload:
            self._on_reload(snap)
        return True

    def _fail(self, message: str) -> None:
        log.error("%s", message)
        if self._on_failure:
            self._on_failure(message)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.check_now()
