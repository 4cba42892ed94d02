"""Resumable, incremental embedding runs: plan what to embed, embed it in checkpointed windows, commit.

A run of ``tki embed --images I --out G`` (either engine) goes:

1. **List** the files (:func:`~tki_sdk.runtime.pipeline.ingest.scan_sources`): key = hash of the path relative to
   ``I``, signature = (size, mtime) or, with ``--hash``, (size, SHA-256).
2. **Plan** (:func:`plan_run`) against two records: the gallery ``G`` (each item's metadata holds the
   signature it was embedded from) and the shards of an unfinished run in ``G/embed-run/shards``. A file is
   *unchanged* when the gallery holds its key with the same signature, *resumed* when a shard already holds
   a good row with its current signature, and *to embed* otherwise; gallery keys no longer listed are
   *deleted* (removed with ``prune``).
3. **Embed** the files to embed with an engine (one process: :func:`embed_local`; Ray Data:
   :mod:`tki_sdk.runtime.pipeline.distributed`). Rows go through a :class:`Checkpointer`, which writes a shard
   (:mod:`tki_sdk.runtime.pipeline.shards`) every ``every`` rows or ``seconds`` seconds, whichever comes first, and
   on Ctrl-C. Each shard is written whole by the atomic writer: a run killed with SIGKILL loses at most the
   rows since the last shard, and the next run's plan skips everything the shards hold. Memory holds one
   window of rows, never the whole collection.
4. **Commit** (:func:`index_shards`): stream the shards into the gallery -- only rows whose signature is the
   file's current one (older rows of the same key are stale), one vector per key -- prune, save a new gallery
   version atomically, then delete the run folder.

Why a skip list of our own rather than Ray Data's checkpointing: the same keys and signatures already
decide what is unchanged for incremental runs, so resuming is the same comparison against a second record
(the shards), works the same for both engines, and costs one read of three small columns per shard.

``G/embed-run/run.json`` (:class:`RunState`) records which model, folder and signature mode the unfinished
run belongs to, so a run is never resumed with another model or folder, and the SHA-256 of every shard it
wrote: a resume checks them (:func:`verify_run_shards`; unrecorded shards get a full read, page checksums
and row hashes) and refuses a damaged one naming it, or sets it aside (``set_aside_damaged``) and embeds its
rows again.

One writer per gallery: the whole run -- listing, planning, embedding, commit -- holds the gallery's writer
lock (:func:`~tki_sdk.runtime.index.store.writer_lock`; a second run waits, with a logged message, or with
``wait=False`` refuses), and the commit is a compare-and-swap on ``CURRENT`` against the version the run
loaded, so a writer that bypassed the lock makes the commit fail instead of losing its items. Items record
``embedding_hash`` (:func:`~tki_sdk.runtime.pipeline.shards.vector_hash`): a row is *unchanged* only when its
metadata and its vector are the gallery's, so later rows of a key supersede earlier ones.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tki_sdk.common.atomic import atomic_write_json
from tki_sdk.common.errors import EXIT_FAILED, EXIT_USAGE, one_line, printable
from tki_sdk.common.contract import ContractError, check_version, read_json_object
from tki_sdk.common.imagefolders import SkippedEntry

from tki_sdk.runtime.index.gallery import Gallery, first_bad_vector
from tki_sdk.runtime.index.store import (
    RUN_DIR,
    GalleryExistsError,
    StaleVersionError,
    WriterBusyError,
    current_version,
    is_gallery,
    writer_lock,
)
from tki_sdk.runtime.pipeline.config import EmbedConfig
from tki_sdk.runtime.pipeline.errors import (
    GalleryBusyError,
    GalleryChangedError,
    NothingEmbeddedError,
    PipelineError,
    ShardDamagedError,
)
from tki_sdk.runtime.pipeline.protocols import EmbedderLike, GalleryLike
from tki_sdk.runtime.pipeline.ingest import SourceFile, iter_chunks, scan_sources, stored_signature
from tki_sdk.runtime.pipeline.shards import (
    SHARD_COLUMNS,
    SIGNATURE_COLUMNS,
    ShardInfo,
    ShardRows,
    iter_shard_batches,
    list_shards,
    read_shard_info,
    shard_sha256,
    shard_width,
    vector_hash,
    write_shard,
)
from tki_sdk.common.progress import progress_bar

__all__ = [
    "RUN_DIR", "RUN_FILE", "SHARDS_DIR", "TRACE_ENV", "RunState", "RunPlan", "Checkpointer", "IndexReport",
    "EmbedJob", "JobReport", "plan_run", "held_signatures", "indexed_metadata", "embed_local", "index_shards",
    "run_job", "trace_embedded", "verify_run_shards", "index_folder", "check_same_graph", "Engine",
]

RUN_FILE = "run.json"
SHARDS_DIR = "shards"
DAMAGED_DIR = "damaged"
RUN_FORMAT = "tki-embed-run"
RUN_FORMAT_VERSION = 1
#: Diagnostics: when set to a file path, every file sent to the model is appended to it (one ``rel`` per
#: line, from whichever process runs the model). Tests count inference calls with it.
TRACE_ENV = "TKI_EMBED_TRACE"

log = logging.getLogger(__name__)


def trace_embedded(rels: Iterable[str]) -> None:
    """Append ``rels`` to the file named by ``$TKI_EMBED_TRACE`` (no-op when unset)."""
    path = os.environ.get(TRACE_ENV)
    if not path:
        return
    data = "".join(f"{r}\n" for r in rels).encode("utf-8", "surrogateescape")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------- run state
@dataclass
class RunState:
    """``embed-run/run.json``: what an unfinished run embeds, so a resume uses the same model and files."""

    model_fingerprint: str
    images_root: str
    use_hash: bool
    engine: str
    started: str
    #: ``{shard file name: SHA-256}`` of every shard this run wrote (checked before a resume uses them).
    shards: dict[str, str] = field(default_factory=dict)
    format: str = RUN_FORMAT
    format_version: int = RUN_FORMAT_VERSION

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        return atomic_write_json(folder / RUN_FILE, asdict(self))

    @classmethod
    def load(cls, folder: Path) -> "RunState":
        fix = f"delete {folder} or pass --restart"
        d = read_json_object(folder / RUN_FILE, "embedding run state", fix)
        if d.get("format") != RUN_FORMAT:
            raise ContractError(f"{folder / RUN_FILE} is not an embedding run state; {fix}")
        check_version(d.get("format_version"), RUN_FORMAT_VERSION, str(folder / RUN_FILE))
        try:
            st = cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
        except TypeError as e:
            raise ContractError(f"{folder / RUN_FILE} lacks a field ({e}); {fix}") from None
        if not isinstance(st.shards, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                       for k, v in st.shards.items()):
            raise ContractError(f"{folder / RUN_FILE}: 'shards' is not a map of file names to SHA-256; {fix}")
        return st


# ---------------------------------------------------------------------------------------------- plan
@dataclass
class RunPlan:
    """What a run does with each listed file (see the module docstring)."""

    todo: list[SourceFile]
    resumed: list[SourceFile]
    unchanged: int
    deleted: list[int]
    listing_failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def wanted(self) -> dict[int, SourceFile]:
        """Files whose rows the commit indexes: to embed now, or already in the run's shards."""
        return {s.key: s for s in (*self.resumed, *self.todo)}


def indexed_metadata(gallery: GalleryLike, chunk: int = 10_000) -> dict[int, dict[str, Any]]:
    """Every item's metadata in ``gallery`` by key (read in chunks)."""
    keys = gallery.keys()
    out: dict[int, dict[str, Any]] = {}
    for s in range(0, len(keys), chunk):
        part = keys[s : s + chunk]
        for k, m in zip(part, gallery.get_metadata(part)):
            out[int(k)] = m or {}
    return out


def held_signatures(shards: Sequence[Path], use_hash: bool, fingerprint: str) -> dict[int, tuple[Any, ...]]:
    """Signatures of the good rows the ``shards`` hold (later shards supersede earlier ones); refuses a
    shard of another model. Reads only the signature columns."""
    held: dict[int, tuple[Any, ...]] = {}
    for path in shards:
        for b in iter_shard_batches(path, SIGNATURE_COLUMNS):
            for i, k in enumerate(b["key"].tolist()):
                if b["error"][i] is None:
                    held[k] = (int(b["size"][i]), b["sha256"][i]) if use_hash else (int(b["size"][i]), int(b["mtime_ns"][i]))
                else:
                    held.pop(k, None)
    return held


def _check_shard(path: Path, fingerprint: str | None, width: int | None = None) -> ShardInfo:
    """The shard's :class:`ShardInfo`, refusing a shard that is unreadable (:class:`ShardDamagedError`), of
    another model, or whose vectors are not ``width`` wide (whatever its keys)."""
    try:
        info = read_shard_info(path)
    except ContractError as e:
        raise ShardDamagedError(path, f"cannot be used ({e}); move it out of {path.parent}") from None
    if fingerprint is not None and info.model_fingerprint != fingerprint:
        raise PipelineError(f"shard {path} was written by another model ({info.model_fingerprint[:12]}, "
                            f"not {fingerprint[:12]}); use another --shards folder or pass --restart")
    stored = shard_width(path)
    if stored != info.embedding_dim:
        raise ShardDamagedError(path, f"holds {stored}-d vectors but its metadata says {info.embedding_dim}-d")
    if width is not None and info.embedding_dim != width:
        raise PipelineError(f"shard {path} holds {info.embedding_dim}-d vectors but the gallery holds {width}-d "
                            "ones; index it into a gallery of its own model")
    return info


def verify_run_shards(shard_dir: Path, recorded: Mapping[str, str], fingerprint: str, *,
                      set_aside: bool = False, damaged_dir: Path | None = None) -> list[Path]:
    """The shards of ``shard_dir`` a resume may use, in write order. A shard whose SHA-256 differs from the one
    the run ``recorded``, or (not recorded: the run was killed between writing it and recording it, or it
    came from an earlier run into a kept ``--shards`` folder) one that fails a full read (page checksums and
    row hashes), is damaged: refused in one line naming it (:class:`ShardDamagedError`), or with
    ``set_aside`` moved into ``damaged_dir`` (logged), so its rows are embedded again."""
    good: list[Path] = []
    for path in list_shards(shard_dir):
        try:
            want = recorded.get(path.name)
            if want is not None:
                if shard_sha256(path) != want:
                    raise ShardDamagedError(path, "differs from the SHA-256 the run recorded when it wrote it")
                _check_shard(path, fingerprint)
            else:
                _check_shard(path, fingerprint)
                for _ in iter_shard_batches(path, SHARD_COLUMNS):
                    pass
        except ShardDamagedError as e:
            if not set_aside or damaged_dir is None:
                raise ShardDamagedError(path, f"{str(e).removeprefix(f'shard {path} ')}; run again with "
                                        f"--set-aside-damaged to move it to {damaged_dir or 'a damaged/ folder'} "
                                        "and embed its rows again") from None
            damaged_dir.mkdir(parents=True, exist_ok=True)
            os.replace(path, damaged_dir / path.name)
            log.warning("%s; moved it to %s: its rows are embedded again", e, damaged_dir / path.name)
            continue
        good.append(path)
    return good


def plan_run(
    sources: Sequence[SourceFile],
    indexed: Mapping[int, Mapping[str, Any]],
    held: Mapping[int, tuple[Any, ...]],
    use_hash: bool,
    listing_failed: Sequence[tuple[str, str]] = (),
) -> RunPlan:
    """Split ``sources`` into to-embed / resumed / unchanged against the gallery's ``indexed`` metadata and
    the run's ``held`` shard signatures; gallery keys not listed are ``deleted``."""
    todo, resumed, unchanged = [], [], 0
    listed = set()
    for s in sources:
        listed.add(s.key)
        sig = s.signature(use_hash)
        meta = indexed.get(s.key)
        if meta is not None and stored_signature(dict(meta), use_hash) == sig and meta.get("rel") == s.rel:
            unchanged += 1
        elif held.get(s.key) == sig:
            resumed.append(s)
        else:
            todo.append(s)
    deleted = sorted(k for k in indexed if k not in listed)
    return RunPlan(todo, resumed, unchanged, deleted, list(listing_failed))


# ---------------------------------------------------------------------------------------------- checkpoints
class Checkpointer:
    """Collects rows and writes them as a shard every ``every`` rows or ``seconds`` seconds (and on
    :meth:`flush`); the only state a killed run loses is what :meth:`pending` holds."""

    def __init__(self, folder: Path, info: ShardInfo, every: int = 1000, seconds: float = 60.0,
                 on_write: Callable[[Path], None] | None = None) -> None:
        if every < 1 or seconds <= 0:
            raise ValueError("checkpoint every N >= 1 rows and T > 0 seconds")
        self.folder, self.info, self.every, self.seconds = Path(folder), info, int(every), float(seconds)
        self.on_write = on_write
        self.rows = ShardRows()
        self.written: list[Path] = []
        self.rows_written = 0
        self._since = time.monotonic()

    @property
    def pending(self) -> int:
        return len(self.rows)

    def add(self, source: SourceFile, embedding: np.ndarray | None, error: str | None) -> None:
        self.rows.append(source, embedding, error)

    def maybe_flush(self) -> None:
        """Write a shard when the window is full or old enough."""
        if len(self.rows) >= self.every or (self.rows and time.monotonic() - self._since >= self.seconds):
            self.flush()

    def flush(self) -> Path | None:
        """Write the pending rows as one shard (nothing when there are none)."""
        self._since = time.monotonic()
        if not self.rows:
            return None
        path = write_shard(self.folder, self.rows, self.info)
        if self.on_write is not None:
            self.on_write(path)
        self.written.append(path)
        self.rows_written += len(self.rows)
        self.rows = ShardRows()
        return path


def embed_local(
    todo: Sequence[SourceFile],
    embedder: EmbedderLike,
    checkpoints: Checkpointer,
    *,
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool = False,
) -> int:
    """Embed ``todo`` in this process (``Embedder.embed_images`` over slices of at most 16 batches, so a
    checkpoint can fall between slices) and hand every row to ``checkpoints``. Pending rows are written on
    Ctrl-C too. Returns the number of files sent to the model."""
    bar = progress_bar(len(todo), "embed", unit="img") if progress else None
    sent = 0
    step = max(1, min(checkpoints.every, 16 * batch_size))
    try:
        for part in iter_chunks(list(todo), step):
            res = embedder.embed_images([s.path for s in part], batch_size=batch_size, workers=workers)
            good = {int(i): row for row, i in enumerate(res.indices)}
            trace_embedded(part[i].rel for i in good)
            sent += len(good)
            reasons = {str(item): reason for item, reason in res.errors}
            for i, s in enumerate(part):
                if i in good:
                    checkpoints.add(s, res.embeddings[good[i]], None)
                else:
                    checkpoints.add(s, None, reasons.get(s.path, "could not be embedded"))
            if bar is not None:
                bar.update(len(part))
            checkpoints.maybe_flush()
    except KeyboardInterrupt:
        checkpoints.flush()
        raise
    finally:
        if bar is not None:
            bar.close()
    checkpoints.flush()
    return sent


# ---------------------------------------------------------------------------------------------- commit
@dataclass
class IndexReport:
    """What :func:`index_shards` did: items ``added`` (new keys), ``updated`` (replaced vectors),
    ``unchanged`` (rows equal to the gallery's item), ``stale`` (rows of an older file version, skipped),
    ``pruned`` (keys removed), and ``failed`` files ``(path, reason)`` (their old item, if any, removed)."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    stale: int = 0
    pruned: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    rows: int = 0


def _row_source(b: dict[str, Any], i: int) -> SourceFile:
    return SourceFile(key=int(b["key"][i]), path=b["path"][i], rel=b["rel"][i], domain=b["domain"][i],
                      class_name=b["class"][i], size=int(b["size"][i]), mtime_ns=int(b["mtime_ns"][i]),
                      sha256=b["sha256"][i])


def index_shards(
    gallery: GalleryLike,
    shards: Sequence[Path],
    *,
    wanted: Mapping[int, SourceFile] | None = None,
    use_hash: bool = False,
    prune: Sequence[int] = (),
    batch_rows: int = 4096,
    progress: bool = False,
) -> IndexReport:
    """Stream ``shards`` (in write order) into ``gallery``: one batch of rows in memory at a time.

    With ``wanted`` (a run's plan) only rows of wanted keys whose signature equals the file's current one are
    used, and the item's metadata is the current file's; without it (``tki index``) every row is used and
    later rows of a key supersede earlier ones. A good row adds its key or replaces a different item; an
    error row removes the key's old item and reports the file as failed (a later good row of the same key
    clears that). Rows equal to the gallery's item change nothing, so duplicate rows (a retried task, a
    resumed run) never index a file twice. Finally the ``prune`` keys are removed.
    """
    rep = IndexReport()
    before: dict[int, bool] = {}  # key -> held an item before this call
    applied: set[int] = set()
    failed: dict[int, tuple[str, str]] = {}
    bar = progress_bar(len(shards), "index", unit="shard") if progress and shards else None
    try:
        for path in shards:
            _check_shard(path, gallery.model_fingerprint, gallery.ndim)
            for b in iter_shard_batches(path, SHARD_COLUMNS, batch_rows):
                _check_batch_vectors(path, b, gallery)
                _apply_batch(gallery, b, wanted, use_hash, rep, before, applied, failed)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    for k in applied:
        if k not in failed:
            if before[k]:
                rep.updated += 1
            else:
                rep.added += 1
    rep.failed = list(failed.values())
    if len(prune):
        rep.pruned = int(gallery.remove(np.asarray(prune, dtype=np.uint64)))
    return rep


def _check_batch_vectors(path: Path, b: dict[str, Any], gallery: GalleryLike) -> None:
    """Refuse the shard (naming it and the row) when a good row's vector cannot be indexed
    (:func:`~tki_sdk.runtime.index.gallery.check_vectors`: non-finite, or a float32 norm of 0 or infinity)."""
    good = np.flatnonzero(np.array([e is None for e in b["error"]], dtype=bool))
    if not good.size:
        return
    bad = first_bad_vector(b["embedding"][good], zero_ok=gallery.metric in ("l2sq", "poincare"))
    if bad is not None:
        row = int(good[bad[0]])
        raise ShardDamagedError(path, f"holds a vector that cannot be indexed (key {int(b['key'][row])}, "
                                f"{printable(b['rel'][row])}: {bad[1]}); nothing was written: re-embed the file "
                                "or remove the shard", code=EXIT_USAGE)


def _apply_batch(gallery: GalleryLike, b: dict[str, Any], wanted: Mapping[int, SourceFile] | None, use_hash: bool,
                 rep: IndexReport, before: dict[int, bool], applied: set[int],
                 failed: dict[int, tuple[str, str]]) -> None:
    keys = b["key"]
    rep.rows += len(keys)
    current = gallery.get_metadata(keys) if len(keys) else []
    queue: list[tuple[int, np.ndarray, dict[str, Any]]] = []
    touched: set[int] = set()

    def flush() -> None:
        if queue:
            gallery.add(np.asarray([q[0] for q in queue], dtype=np.uint64), np.stack([q[1] for q in queue]),
                        [q[2] for q in queue])
            queue.clear()

    for i, k in enumerate(keys.tolist()):
        row = _row_source(b, i)
        if wanted is not None:
            want = wanted.get(k)
            if want is None or want.signature(use_hash) != row.signature(use_hash):
                rep.stale += 1
                continue
            row = want
        if k in touched:  # the key repeats within this batch: see what the earlier row left
            flush()
            old = gallery.get_metadata([k])[0]
        else:
            old = current[i]
        touched.add(k)
        before.setdefault(k, old is not None)
        error = b["error"][i]
        if error is not None:
            failed[k] = (row.path, error)
            if old is not None:
                gallery.remove(np.asarray([k], dtype=np.uint64))
            continue
        failed.pop(k, None)
        meta = {**row.metadata(), "embedding_hash": vector_hash(b["embedding"][i])}
        if old == meta:
            rep.unchanged += 1
            continue
        if old is not None:
            gallery.remove(np.asarray([k], dtype=np.uint64))
        queue.append((k, b["embedding"][i], meta))
        applied.add(k)
    flush()


# ---------------------------------------------------------------------------------------------- the job
#: The job's configuration (:class:`~tki_sdk.runtime.pipeline.config.EmbedConfig`); the old name stays.
EmbedJob = EmbedConfig


@dataclass
class JobReport:
    """Outcome of :func:`run_job`: per-file counts, the failed files, and timings."""

    listed: int
    added: int
    updated: int
    unchanged: int
    resumed: int
    pruned: int
    deleted_kept: int
    failed: list[tuple[str, str]]
    embedded: int
    shards_written: int
    gallery_items: int
    saved: bool
    wall_s: float
    embed_s: float
    index_s: float


#: ``engine(todo, checkpoints) -> files sent to the model``
Engine = Callable[[Sequence[SourceFile], Checkpointer], int]


def run_job(job: EmbedConfig, model: ShardInfo, engine: Engine, new_gallery: Callable[[], GalleryLike]) -> JobReport:
    """Plan, embed (with ``engine``), commit and clean up one run; see the module docstring.

    ``model`` describes the model (fingerprint, width, metric, summary) and is written into every shard;
    ``new_gallery()`` makes an empty gallery when ``job.out`` holds none (or ``job.overwrite``). Raises
    :class:`~tki_sdk.runtime.pipeline.errors.PipelineError` for conditions the user must fix (code 1 when no file
    at all could be embedded). Only ``job``'s run fields are used (not its model or engine fields: the caller
    built ``model`` and ``engine``; :func:`tki_sdk.runtime.pipeline.job.embed_folder` does all of it).
    """
    t0 = time.perf_counter()
    out = Path(job.out)
    out_existed = out.exists()
    with _writer(out, job.wait):
        try:
            return _run_locked(job, model, engine, new_gallery, t0)
        except BaseException:
            if not out_existed and not is_gallery(out):  # nothing of this run may remain where it made the folder
                _remove_created(out)
            raise


def _writer(out: Path, wait: bool) -> contextlib.AbstractContextManager[None]:
    """The gallery's writer lock (:func:`~tki_sdk.runtime.index.store.writer_lock`) with the pipeline's messages."""
    @contextlib.contextmanager
    def held() -> Iterator[None]:
        try:
            with writer_lock(out, wait=wait, on_wait=lambda pid: log.warning(
                    "gallery %s is being written by another run (pid %s); waiting for it to finish", out, pid)):
                yield
        except WriterBusyError as e:
            raise GalleryBusyError(str(e)) from None

    return held()


def _remove_created(out: Path) -> None:
    """Remove a gallery folder this run created and left without a gallery (keeps checkpoints, if any)."""
    try:
        if (out / RUN_DIR).exists():
            return  # completed checkpoints are kept for the next run
        shutil.rmtree(out, ignore_errors=True)
    except OSError:
        pass


def _run_locked(job: EmbedConfig, model: ShardInfo, engine: Engine, new_gallery: Callable[[], GalleryLike],
                t0: float) -> JobReport:
    out = Path(job.out)
    base = current_version(out)  # read before loading: a save slipping in between fails the compare-and-swap
    run_dir = out / RUN_DIR
    shard_dir = Path(job.shards) if job.shards is not None else run_dir / SHARDS_DIR
    skipped: list[SkippedEntry] = []
    sources, listing_failed = scan_sources(job.images, use_hash=job.use_hash, manifest=job.manifest,
                                           skipped=skipped)
    # entries the walker never opened (FIFOs, sockets, devices, link loops, unreadable folders) are failures
    listing_failed = listing_failed + [(str(e.path), e.reason) for e in skipped]
    if not sources and not listing_failed and not is_gallery(out):
        raise PipelineError(f"no image files under {job.images} (looked for .jpg, .png, .gif, .bmp, .tif, .webp, ...)")

    gallery = _open_gallery(job, model, new_gallery, is_gallery(out))
    is_new = len(gallery) == 0 and not is_gallery(out)
    if job.overwrite or job.restart:
        shutil.rmtree(run_dir, ignore_errors=True)
        if job.shards is not None and job.overwrite:
            for p in list_shards(shard_dir):
                p.unlink()
    state = _claim_run(run_dir, job, model)
    try:
        usable = verify_run_shards(shard_dir, state.shards, model.model_fingerprint, set_aside=job.set_aside_damaged,
                                   damaged_dir=run_dir / DAMAGED_DIR)
        held = held_signatures(usable, job.use_hash, model.model_fingerprint)
        plan = plan_run(sources, {} if job.overwrite else indexed_metadata(gallery), held, job.use_hash, listing_failed)

        def record(path: Path) -> None:  # the shard is complete on disk: record its hash for later resumes
            state.shards[path.name] = shard_sha256(path)
            state.save(run_dir)

        ckpt = Checkpointer(shard_dir, model, every=job.every, seconds=job.seconds, on_write=record)
        t1 = time.perf_counter()
        embedded = engine(plan.todo, ckpt) if plan.todo else 0
        t2 = time.perf_counter()
        rep = index_shards(gallery, list_shards(shard_dir), wanted=plan.wanted, use_hash=job.use_hash,
                           prune=plan.deleted if job.prune else (), progress=job.progress)
        t3 = time.perf_counter()
        failed = plan.listing_failed + rep.failed
        changed = bool(plan.todo or plan.resumed or rep.pruned or is_new or job.overwrite)
        if len(gallery) == 0 and is_new:
            raise NothingEmbeddedError(f"none of the {len(sources) + len(listing_failed)} files under {job.images} could be "
                             "read; nothing was written", code=EXIT_FAILED)
        if changed and job.target_recall > 0 and not gallery.exact and len(gallery) > 1:
            gallery.tune(min(1.0, job.target_recall))  # stored in gallery.json; `tki info` shows the estimate
        if changed:
            # a gallery this run creates is created exclusively: when another run created one at ``out``
            # meanwhile, this one refuses instead of replacing it (unless --overwrite)
            _save(gallery, out, overwrite=job.overwrite or not is_new, expect=base)
    except PipelineError as e:
        if e.code == EXIT_FAILED and not base:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    _finish_run(run_dir, job)
    return JobReport(
        listed=len(sources) + len(listing_failed), added=rep.added, updated=rep.updated, unchanged=plan.unchanged, resumed=len(plan.resumed),
        pruned=rep.pruned, deleted_kept=0 if job.prune else len(plan.deleted), failed=failed, embedded=embedded,
        shards_written=len(ckpt.written), gallery_items=len(gallery), saved=changed,
        wall_s=time.perf_counter() - t0, embed_s=t2 - t1, index_s=t3 - t2,
    )


def _save(gallery: GalleryLike, out: Path, overwrite: bool, expect: str | None = None) -> None:
    """``gallery.save`` (compare-and-swap on ``expect``) with its failures as one-line errors (exit 2: another
    run created the gallery; exit 1: the gallery changed meanwhile, or the write failed; the live version is
    kept)."""
    try:
        gallery.save(out, overwrite=overwrite, expect=expect)
    except GalleryExistsError as e:
        raise PipelineError(str(e).replace("pass --overwrite", "use {overwrite}"), fields=("overwrite",)) from None
    except StaleVersionError as e:
        raise GalleryChangedError(str(e)) from None
    except OSError as e:
        raise PipelineError(f"cannot write gallery {out}: {one_line(e)}", code=EXIT_FAILED) from None


def _open_gallery(job: EmbedConfig, model: ShardInfo, new_gallery: Callable[[], GalleryLike], exists: bool) -> GalleryLike:
    if not exists or job.overwrite:
        return new_gallery()
    try:
        g = Gallery.load(job.out)
    except (OSError, ValueError) as e:
        raise PipelineError(f"cannot open gallery {job.out}: {one_line(e)}; use {{overwrite}} to rebuild it",
                            fields=("overwrite",)) from None
    if g.model_fingerprint and g.model_fingerprint != model.model_fingerprint:
        raise PipelineError(f"gallery {job.out} was built with another model ({g.model_fingerprint[:12]}); "
                            "use {overwrite} to rebuild it with this one", fields=("overwrite",))
    if job.exact is not None and bool(job.exact) != g.exact:
        raise PipelineError(f"gallery {job.out} is {'exact' if g.exact else 'HNSW'}; use {{overwrite}} to rebuild it",
                            fields=("overwrite",))
    if job.dtype is not None and job.dtype != g.dtype:
        raise PipelineError(f"gallery {job.out} stores {g.dtype} vectors; use {{overwrite}} to rebuild it as "
                            f"{job.dtype}", fields=("overwrite",))
    check_same_graph(job.out, {"exact": g.exact, "connectivity": g.connectivity, "expansion_add": g.expansion_add},
                     connectivity=job.connectivity, expansion_add=job.expansion_add)
    return g


def check_same_graph(gallery: Path, built: dict[str, Any], *, connectivity: int | None,
                     expansion_add: int | None) -> None:
    """Refuse (:class:`PipelineError`) graph options that differ from those the gallery was ``built`` with
    (its ``gallery.json`` fields ``exact``, ``connectivity``, ``expansion_add``); ``None`` means not given."""
    for key, want in (("connectivity", connectivity), ("expansion_add", expansion_add)):
        if want is not None and not built.get("exact") and int(want) != int(built[key]):
            raise PipelineError(f"gallery {gallery} was built with {{{key}}} {built[key]}; use {{overwrite}} to "
                                f"rebuild it with {want}", fields=(key, "overwrite"))


def _claim_run(run_dir: Path, job: EmbedJob, model: ShardInfo) -> RunState:
    """Resume the unfinished run in ``run_dir`` when it is the same run; start one otherwise."""
    root = str(Path(job.images).resolve())
    if (run_dir / RUN_FILE).is_file():
        try:
            st = RunState.load(run_dir)
        except ContractError as e:
            raise PipelineError(str(e).replace("pass --restart", "use {restart}"), fields=("restart",)) from None
        if st.model_fingerprint != model.model_fingerprint:
            raise PipelineError(f"{run_dir} holds an unfinished run of another model; use {{restart}} to discard it",
                                fields=("restart",))
        if st.images_root != root:
            raise PipelineError(f"{run_dir} holds an unfinished run of {st.images_root}; use {{restart}} to discard "
                                "it", fields=("restart",))
        if st.use_hash != job.use_hash:
            raise PipelineError(f"{run_dir} holds an unfinished run {'with' if st.use_hash else 'without'} "
                                "{use_hash}; run it the same way or use {restart}", fields=("use_hash", "restart"))
        return st
    st = RunState(model.model_fingerprint, root, job.use_hash, job.engine, time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    st.save(run_dir)
    return st


def _finish_run(run_dir: Path, job: EmbedJob) -> None:
    """The commit is saved: the run folder (and its shards, unless the user named the folder) goes."""
    shutil.rmtree(run_dir, ignore_errors=True)


def _no_new_gallery() -> GalleryLike:
    raise AssertionError("an existing gallery is updated, never replaced")  # pragma: no cover


def index_folder(
    shard_dir: Path, gallery_path: Path, *, exact: bool | None = None, dtype: str | None = None,
    progress: bool = False, connectivity: int | None = None, expansion_add: int | None = None, wait: bool = True,
) -> tuple[IndexReport, GalleryLike]:
    """``tki index``: build the gallery at ``gallery_path`` from every shard in ``shard_dir`` or update the
    one there (same model required), then save it (compare-and-swap), all under the gallery's writer lock
    (``wait=False``: refuse when another run holds it). Returns the report and the gallery."""
    shards = list_shards(shard_dir)
    if not shards:
        raise PipelineError(f"no shards (part-*.parquet) in {shard_dir}")
    out = Path(gallery_path)
    out_existed = out.exists()
    with _writer(out, wait):
        try:
            return _index_locked(shards, shard_dir, out, exact=exact, dtype=dtype, progress=progress,
                                 connectivity=connectivity, expansion_add=expansion_add)
        except BaseException:
            if not out_existed and not is_gallery(out):
                _remove_created(out)
            raise


def _index_locked(shards: Sequence[Path], shard_dir: Path, out: Path, *, exact: bool | None, dtype: str | None,
                  progress: bool, connectivity: int | None, expansion_add: int | None) -> tuple[IndexReport, GalleryLike]:
    base = current_version(out)
    info = _check_shard(shards[0], None)
    if is_gallery(out):
        job = EmbedJob(images=Path("."), out=out, exact=exact, dtype=dtype,
                       connectivity=connectivity, expansion_add=expansion_add)
        gallery = _open_gallery(job, info, _no_new_gallery, True)
    else:
        try:
            graph = {k: v for k, v in (("connectivity", connectivity), ("expansion_add", expansion_add)) if v is not None}
            gallery = Gallery(info.embedding_dim, metric=info.metric, exact=bool(exact), dtype=dtype or "f32",
                              model_fingerprint=info.model_fingerprint, model_info=info.model, **graph)
        except ValueError as e:
            raise PipelineError(one_line(e)) from None
    rep = index_shards(gallery, shards, progress=progress)
    if len(gallery) == 0:
        raise NothingEmbeddedError(f"the shards in {shard_dir} hold no embedded file; nothing was written")
    _save(gallery, out, overwrite=is_gallery(out), expect=base)
    return rep, gallery
