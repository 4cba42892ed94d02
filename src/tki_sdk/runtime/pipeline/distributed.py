"""``tki embed --engine ray``: the embedding run on Ray Data, one machine or a cluster.

The pipeline (Ray Data's streaming executor schedules, retries and applies back-pressure; nothing here
schedules work itself)::

    from_items(key, path, rel)                       the files the run's plan says to embed
      -> map_batches(decode_batch)                   CPU tasks: read the bytes, decode and preprocess with the
                                                     runtime's own Preprocessor (bit-equal to one process; not
                                                     Ray's read_images, whose resize differs); a bad file
                                                     becomes a row with an error, never a failed task
      -> map_batches(EmbedActor, ActorPoolStrategy)  one Embedder per actor, intra-op threads set explicitly;
                                                     actors restart when lost and their batches are retried
                                                     (Ray Data's defaults for actor pools: max_restarts and
                                                     max_task_retries -1)
      -> iter_batches on the driver                  rows go to the run's Checkpointer, which writes Parquet
                                                     shards (:mod:`tki_sdk.runtime.pipeline.shards`) carrying the model
                                                     fingerprint

Exactly once: the driver keeps the first row it receives per key and drops repeats (a retried batch whose
first attempt got through), and after the stream ends it checks that every planned key came back; the
missing ones (if any) go through the pipeline once more, and a key still missing fails the run with a
message rather than being dropped. The gallery commit (:func:`tki_sdk.runtime.pipeline.embed_run.index_shards`)
holds one vector per key whatever the shards hold.

Where decoding runs (``RayOptions.decode``): ``"tasks"`` as drawn above; ``"actor"``: no decode tasks, each
model actor receives the file paths, :data:`ACTOR_BATCHES` model batches at a time, and decodes them with
:meth:`Embedder.embed_images` (its decode threads overlap the model, exactly as in one process);
``"auto"`` (default): ``"actor"`` on a one-node cluster, ``"tasks"`` on several nodes. Why: on one machine
decode tasks add no CPU, only a pass of every image's pixels through the object store, and they compete with
the model for the same cores; in the actor, decoding overlaps the model as it does in one process. (The
embed suite's runs on a shared 2-core machine, benchmarks/results/embed/*-shared.json, could not separate the
two: the load of other work moved each pair by more than the difference.)

Resources are checked before anything runs (:func:`plan_resources`, against the cluster's nodes): GPUs that
no node has, or more CPUs per actor than any node has, are refused in one line (exit status 2); more actors
than fit are reduced to those that fit, and decode tasks that would find no CPU left beside the actors are
replaced by decoding inside the actors, each with a logged warning. A run that receives no result for
``RayOptions.stall_seconds`` (``--stall-seconds``; a cluster busy with other work) says so in one line and
stops (exit status 1), its checkpoints kept.

A local Ray started for the run is stopped with it, however the run ends (a watchdog process, and a sweep of
what earlier runs left: :mod:`tki_sdk.runtime.pipeline.ray_reaper`).

``--gpus-per-actor G`` reserves ``G`` GPUs per actor and runs the model on onnxruntime's CUDA provider
(install onnxruntime-gpu on the workers).

Ray and pyarrow are imported lazily, only when the engine runs; nothing else in the runtime imports Ray.
Environment variables starting with ``TKI_`` are passed to the workers (logging, diagnostics).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tki_sdk.common.errors import EXIT_FAILED
from tki_sdk.common.extras import missing_extra
from tki_sdk.common.model_metadata import ModelMetadata
from tki_sdk.common.progress import progress_bar
from tki_sdk.runtime.engine.embedder import Embedder
from tki_sdk.runtime.engine.images import ImageLoadError
from tki_sdk.runtime.engine.preprocess import Preprocessor
from tki_sdk.runtime.pipeline import ray_reaper
from tki_sdk.runtime.pipeline.embed_run import Checkpointer, trace_embedded
from tki_sdk.runtime.pipeline.errors import PipelineError
from tki_sdk.runtime.pipeline.ingest import SourceFile

__all__ = ["RayOptions", "embed_ray", "import_ray", "decode_batch", "EmbedActor", "FAULT_ENV", "HOLD_ENV", "plan_resources",
           "iter_with_stall", "local_ray", "ACTOR_BATCHES", "DECODE_MODES"]

log = logging.getLogger(__name__)

#: Diagnostics for fault-injection tests: when set to a file path, the first actor to reach its second
#: batch creates that file and kills its own process (SIGKILL) after running the model, once per file.
FAULT_ENV = "TKI_FAULT_KILL_ACTOR_ONCE"
#: Diagnostics for tests that stop a run mid-way: when set to a file path, an actor that has returned
#: :data:`HOLD_AFTER_CALLS` batches waits, before its next one, for as long as that file exists.
HOLD_ENV = "TKI_HOLD_ACTORS_WHILE"
HOLD_AFTER_CALLS = 2

#: ``decode="actor"``: model batches per actor call (the decode threads overlap the model within a call).
ACTOR_BATCHES = 8
DECODE_MODES = ("auto", "actor", "tasks")


def import_ray() -> Any:
    """``ray`` with Ray Data, or one line naming the install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise missing_extra("--engine ray needs Ray Data", "distributed") from e
    return ray


@dataclass(frozen=True)
class RayOptions:
    """How the Ray pipeline runs.

    ``address``: cluster to attach to (``None``: ``$RAY_ADDRESS`` when set, otherwise a local Ray started for
    this run and stopped after it, with ``num_cpus`` CPUs, default all). ``actors`` model actors, each
    reserving ``cpus_per_actor`` CPUs and ``gpus_per_actor`` GPUs and running onnxruntime with ``threads``
    intra-op threads (default: ``cpus_per_actor`` rounded up). Decode tasks reserve ``decode_cpus`` each;
    ``decode`` says where decoding runs (module docstring). ``stall_seconds``: the longest wait for the next
    result before the run stops.
    """

    model_dir: str
    precision: str | None = None
    preprocess: dict[str, Any] = field(default_factory=dict)
    address: str | None = None
    actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    threads: int | None = None
    batch_size: int = 32
    decode_cpus: float = 1.0
    num_cpus: int | None = None
    decode: str = "auto"
    stall_seconds: float = 300.0

    def __post_init__(self) -> None:
        if self.decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {', '.join(DECODE_MODES)} (got {self.decode!r})")
        if not self.stall_seconds > 0:
            raise ValueError(f"stall_seconds must be > 0 (got {self.stall_seconds})")

    @property
    def actor_threads(self) -> int:
        return int(self.threads) if self.threads else max(1, math.ceil(self.cpus_per_actor))


@functools.lru_cache(maxsize=4)
def _preprocessor(model_dir: str, preprocess_json: str) -> Any:

    return Preprocessor.from_metadata(ModelMetadata.load(model_dir), **json.loads(preprocess_json))


def decode_batch(batch: dict[str, np.ndarray], model_dir: str, preprocess_json: str) -> dict[str, np.ndarray]:
    """Ray task: rows ``key, path, rel`` -> ``key, rel, pixels [n, 3, H, W] float32, error`` (``""`` for a
    good row; the reason, as :meth:`Embedder.embed_images` words it, otherwise)."""

    pre = _preprocessor(model_dir, preprocess_json)
    h, w = pre.size
    n = len(batch["key"])
    pixels = np.zeros((n, 3, h, w), dtype=np.float32)
    errors = []
    for i, path in enumerate(batch["path"]):
        try:
            pre.process(str(path), out=pixels[i])
            errors.append("")
        except ImageLoadError as e:
            errors.append(e.reason)
        except Exception as e:  # any other decoder failure stays with its file
            errors.append(f"{type(e).__name__}: {e}")
    return {"key": np.asarray(batch["key"], dtype=np.uint64), "rel": batch["rel"], "pixels": pixels,
            "error": np.asarray(errors, dtype=object)}


class EmbedActor:
    """Ray actor: one :class:`~tki_sdk.runtime.engine.embedder.Embedder`; batches of pixels (``decode_batch``'s
    rows) or, with ``decode=True``, of file paths -> ``key, embedding, error``."""

    def __init__(self, model_dir: str, precision: str | None, threads: int, gpus: float,
                 decode: bool = False, batch_size: int = 32, preprocess_json: str = "{}") -> None:

        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if gpus > 0 else ["CPUExecutionProvider"]
        self.embedder = Embedder(model_dir, precision=precision, threads=threads, providers=providers,
                                 preprocess=json.loads(preprocess_json))
        self.decode = decode
        self.batch_size = batch_size
        self.calls = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._maybe_hold()
        self.calls += 1
        out = self._decode_and_embed(batch) if self.decode else self._embed(batch)
        self._maybe_fail_once()
        return out

    def _embed(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        errors = batch["error"]
        ok = np.asarray([not e for e in errors], dtype=bool)
        out = np.zeros((len(errors), self.embedder.embedding_dim), dtype=np.float32)
        if ok.any():
            out[ok] = self.embedder.embed_pixels(batch["pixels"][ok])
            trace_embedded(str(r) for r, good in zip(batch["rel"], ok) if good)
        return {"key": batch["key"], "embedding": out, "error": errors}

    def _decode_and_embed(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
        res = self.embedder.embed_images(paths, batch_size=self.batch_size)
        out = np.zeros((len(paths), self.embedder.embedding_dim), dtype=np.float32)
        out[res.indices] = res.embeddings
        reasons = {str(item): reason for item, reason in res.errors}
        good = set(res.indices.tolist())
        errors = np.asarray(["" if i in good else reasons.get(p, "could not be embedded") for i, p in enumerate(paths)],
                            dtype=object)
        trace_embedded(str(batch["rel"][i]) for i in sorted(good))
        return {"key": np.asarray(batch["key"], dtype=np.uint64), "embedding": out, "error": errors}

    def _maybe_hold(self) -> None:
        marker = os.environ.get(HOLD_ENV)
        if not marker or self.calls < HOLD_AFTER_CALLS:
            return
        while os.path.exists(marker):
            time.sleep(0.1)

    def _maybe_fail_once(self) -> None:
        marker = os.environ.get(FAULT_ENV)
        if not marker or self.calls < 2:
            return
        try:
            os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            return
        os.kill(os.getpid(), signal.SIGKILL)


def plan_resources(nodes: Sequence[dict[str, float]], opts: RayOptions) -> tuple[RayOptions, list[str]]:
    """``opts`` fitted to a cluster whose alive nodes hold ``nodes`` (each ``{"CPU": n, "GPU": m, ...}``), and
    the adaptations made, one line each; :class:`~tki_sdk.runtime.pipeline.errors.PipelineError` (exit status 2)
    for a request no node can meet.

    Per node, ``fit = min(floor(CPU / cpus_per_actor), floor(GPU / gpus_per_actor) if gpus_per_actor)``
    actors fit. ``sum(fit) == 0``: refused; ``sum(fit) < actors``: ``actors = sum(fit)``. Decode tasks need
    ``decode_cpus`` beside the actors: ``sum(CPU) - actors * cpus_per_actor < decode_cpus`` turns
    ``decode="tasks"`` into ``"actor"``; ``"auto"`` becomes ``"actor"`` on one node, else ``"tasks"``.
    """
    cpus = [float(n.get("CPU", 0.0)) for n in nodes]
    gpus = [float(n.get("GPU", 0.0)) for n in nodes]
    notes: list[str] = []
    if opts.gpus_per_actor > 0 and max(gpus, default=0.0) < opts.gpus_per_actor:
        raise PipelineError(f"{{gpus_per_actor}} {opts.gpus_per_actor:g} needs a node with {opts.gpus_per_actor:g} "
                            f"GPU(s); this Ray cluster has {sum(gpus):g} GPU(s) (largest node "
                            f"{max(gpus, default=0.0):g}): run without {{gpus_per_actor}}, or attach to a cluster with "
                            "GPUs ({address})", fields=("gpus_per_actor", "address"))
    if max(cpus, default=0.0) < opts.cpus_per_actor:
        raise PipelineError(f"{{cpus_per_actor}} {opts.cpus_per_actor:g} is more than any node of this Ray cluster "
                            f"has (largest node: {max(cpus, default=0.0):g} CPUs); use {{cpus_per_actor}} "
                            f"{max(1.0, max(cpus, default=1.0) - opts.decode_cpus):g} or fewer",
                            fields=("cpus_per_actor",))
    fit = 0
    for c, g in zip(cpus, gpus):
        n = math.floor(c / opts.cpus_per_actor + 1e-9)
        if opts.gpus_per_actor > 0:
            n = min(n, math.floor(g / opts.gpus_per_actor + 1e-9))
        fit += n
    actors = opts.actors
    if fit < actors:
        actors = fit
        notes.append(f"--actors {opts.actors}: only {fit} actor(s) of {opts.cpus_per_actor:g} CPU(s)"
                     + (f" and {opts.gpus_per_actor:g} GPU(s)" if opts.gpus_per_actor else "")
                     + f" fit on this Ray cluster ({sum(cpus):g} CPUs, {sum(gpus):g} GPUs); running {fit}")
    decode = opts.decode
    spare = sum(cpus) - actors * opts.cpus_per_actor
    if decode != "actor" and spare + 1e-9 < opts.decode_cpus:
        if decode == "tasks" or len(nodes) > 1:
            notes.append(f"{actors} actor(s) x {opts.cpus_per_actor:g} CPU(s) leave {max(spare, 0):g} of "
                         f"{sum(cpus):g} CPUs for decode tasks of {opts.decode_cpus:g} CPU: decoding inside the "
                         "actors instead")
        decode = "actor"
    elif decode == "auto":
        decode = "actor" if len(nodes) == 1 else "tasks"
    return dataclasses.replace(opts, actors=actors, decode=decode), notes


def _cluster_nodes(ray: Any) -> list[dict[str, float]]:
    return [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]


def _worker_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("TKI_")}


def _pipeline(ray: Any, todo: Sequence[SourceFile], opts: RayOptions) -> Any:
    """The Ray Data pipeline for ``todo``; ``opts`` as :func:`plan_resources` returned it."""
    rd = ray.data
    env = _worker_env()
    remote: dict[str, Any] = {"runtime_env": {"env_vars": env}} if env else {}
    preprocess_json = json.dumps(opts.preprocess, sort_keys=True)
    in_actor = opts.decode == "actor"
    rows = opts.batch_size * (ACTOR_BATCHES if in_actor else 1)
    blocks = max(1, min(math.ceil(len(todo) / rows), 1000))
    ds = rd.from_items([{"key": s.key, "path": s.path, "rel": s.rel} for s in todo], override_num_blocks=blocks)
    if not in_actor:
        h, w = _preprocessor(opts.model_dir, preprocess_json).size
        # A decode task holds a batch of decoded images and their pixels: reserve that memory. (Also what keeps
        # Ray Data from fusing decode into the model actors when both reserve the same CPUs: decode must scale
        # out over all CPUs on its own.)
        decode_memory = opts.batch_size * 3 * h * w * 4 * 3
        ds = ds.map_batches(
            decode_batch, batch_size=opts.batch_size, batch_format="numpy", num_cpus=opts.decode_cpus,
            memory=decode_memory, fn_kwargs={"model_dir": opts.model_dir, "preprocess_json": preprocess_json},
            **remote,
        )
    return ds.map_batches(
        EmbedActor, batch_size=rows, batch_format="numpy",
        compute=rd.ActorPoolStrategy(size=opts.actors),
        fn_constructor_kwargs={"model_dir": opts.model_dir, "precision": opts.precision,
                               "threads": opts.actor_threads, "gpus": opts.gpus_per_actor, "decode": in_actor,
                               "batch_size": opts.batch_size, "preprocess_json": preprocess_json},
        num_cpus=opts.cpus_per_actor, num_gpus=opts.gpus_per_actor or None, **remote,
    )


def iter_with_stall(make: Callable[[], Iterable[Any]], seconds: float) -> Iterator[Any]:
    """The items of ``make()``, produced on a background thread; raises ``TimeoutError`` when the next item
    takes longer than ``seconds`` to arrive (time the caller spends between items is not counted)."""
    q: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def put(item: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def pump() -> None:
        try:
            for item in make():
                if not put(("item", item)):
                    return
            put(("end", None))
        except BaseException as e:  # handed to the consumer
            put(("error", e))

    threading.Thread(target=pump, name="tki-ray-results", daemon=True).start()
    try:
        while True:
            try:
                kind, value = q.get(timeout=seconds)
            except queue.Empty:
                raise TimeoutError(f"no result for {seconds:g} s") from None
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()


def _session_dir(ray: Any) -> str | None:
    try:
        return str(ray._private.worker._global_node.get_session_dir_path())
    except Exception:  # a private attribute: the watchdog falls back on the head processes
        return None


def _start_local_ray(ray: Any, opts: RayOptions) -> Any:
    """``ray.init`` of a local Ray for this run, under a watchdog (:mod:`tki_sdk.runtime.pipeline.ray_reaper`)."""

    ray_reaper.sweep_stale()
    dog = ray_reaper.start_watchdog()
    before = ray_reaper.child_pids()
    try:
        ray.init(num_cpus=opts.num_cpus, include_dashboard=False, log_to_driver=False)
    except BaseException:
        dog.close()
        raise
    dog.attach(_session_dir(ray), sorted(ray_reaper.child_pids() - before - {dog.proc.pid}))
    return dog


@contextlib.contextmanager
def local_ray(num_cpus: int | None = None) -> Iterator[Any]:
    """A local Ray with ``num_cpus`` CPUs (default all) for the ``with`` block, under the same watchdog as a run
    (stopped at the block's end however it ends, or by the next run if this process is killed); yields
    ``ray``. For callers that start Ray once for several :func:`embed_ray` calls (benchmarks)."""
    ray = import_ray()
    dog = _start_local_ray(ray, RayOptions(model_dir="", num_cpus=num_cpus))
    try:
        yield ray
    finally:
        ray.shutdown()
        dog.close()


def embed_ray(todo: Sequence[SourceFile], checkpoints: Checkpointer, opts: RayOptions, *, progress: bool = False) -> int:
    """Embed ``todo`` on Ray Data and hand every row to ``checkpoints`` (see the module docstring).

    Returns the number of good rows received. Pending rows are written on Ctrl-C and on a stall too.
    """
    ray = import_ray()
    dog = None
    started = False
    if not ray.is_initialized():
        if opts.address is None and not os.environ.get("RAY_ADDRESS"):
            dog = _start_local_ray(ray, opts)
        else:
            ray.init(address=opts.address, include_dashboard=False, log_to_driver=False)
        started = True
    bar = None
    seen: set[int] = set()
    good = 0
    try:
        opts, notes = plan_resources(_cluster_nodes(ray), opts)
        for note in notes:
            log.warning("%s", note)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        if progress:
            bar = progress_bar(len(todo), "embed (ray)", unit="img")
        by_key = {s.key: s for s in todo}
        remaining = list(todo)
        for _attempt in range(2):
            stream = _pipeline(ray, remaining, opts)
            for batch in iter_with_stall(lambda: stream.iter_batches(batch_size=None, batch_format="numpy"),
                                         opts.stall_seconds):
                for k, emb, err in zip(batch["key"].tolist(), batch["embedding"], batch["error"]):
                    if k in seen or k not in by_key:
                        continue  # a retried batch whose first attempt got through
                    seen.add(k)
                    checkpoints.add(by_key[k], None if err else emb, str(err) if err else None)
                    good += 0 if err else 1
                    if bar is not None:
                        bar.update(1)
                checkpoints.maybe_flush()
            remaining = [s for s in remaining if s.key not in seen]
            if not remaining:
                break
        if remaining:
            raise RuntimeError(f"{len(remaining)} file(s) got no result from Ray after two passes "
                               f"(first: {remaining[0].path}); re-run to resume")
    except TimeoutError:
        checkpoints.flush()
        raise PipelineError(
            f"Ray made no progress for {opts.stall_seconds:g} s ({len(seen)} of {len(todo)} files done): the cluster "
            f"has no free resources for {opts.actors} actor(s) x {opts.cpus_per_actor:g} CPU(s) (see `ray status`); "
            "the checkpoints are kept: re-run to resume, or raise {stall_seconds}", code=EXIT_FAILED,
            fields=("stall_seconds",)) from None
    except KeyboardInterrupt:
        checkpoints.flush()
        raise
    finally:
        if bar is not None:
            bar.close()
        if started:
            ray.shutdown()
        if dog is not None:
            dog.close()
    checkpoints.flush()
    return good
