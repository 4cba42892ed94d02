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

``--gpus-per-actor G`` reserves ``G`` GPUs per actor and runs the model on onnxruntime's CUDA provider
(install onnxruntime-gpu on the workers).

Ray and pyarrow are imported lazily, only when the engine runs; nothing else in the runtime imports Ray.
Environment variables starting with ``TKI_`` are passed to the workers (logging, diagnostics).
"""
from __future__ import annotations

import functools
import json
import math
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tki_sdk.runtime.pipeline.embed_run import Checkpointer, trace_embedded
from tki_sdk.runtime.pipeline.ingest import SourceFile

__all__ = ["RayOptions", "embed_ray", "import_ray", "decode_batch", "EmbedActor", "FAULT_ENV"]

#: Diagnostics for fault-injection tests: when set to a file path, the first actor to reach its second
#: batch creates that file and kills its own process (SIGKILL) after running the model, once per file.
FAULT_ENV = "TKI_FAULT_KILL_ACTOR_ONCE"


def import_ray() -> Any:
    """``ray`` with Ray Data, or one line naming the install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ImportError("--engine ray needs Ray Data; pip install 'tki-sdk[distributed]'") from None
    return ray


@dataclass(frozen=True)
class RayOptions:
    """How the Ray pipeline runs.

    ``address``: cluster to attach to (``None``: ``$RAY_ADDRESS`` when set, otherwise a local Ray started for
    this run and stopped after it, with ``num_cpus`` CPUs, default all). ``actors`` model actors, each
    reserving ``cpus_per_actor`` CPUs and ``gpus_per_actor`` GPUs and running onnxruntime with ``threads``
    intra-op threads (default: ``cpus_per_actor`` rounded up). Decode tasks reserve ``decode_cpus`` each.
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

    @property
    def actor_threads(self) -> int:
        return int(self.threads) if self.threads else max(1, math.ceil(self.cpus_per_actor))


@functools.lru_cache(maxsize=4)
def _preprocessor(model_dir: str, preprocess_json: str) -> Any:
    from tki_sdk.common.model_metadata import ModelMetadata
    from tki_sdk.runtime.engine.preprocess import Preprocessor

    return Preprocessor.from_metadata(ModelMetadata.load(model_dir), **json.loads(preprocess_json))


def decode_batch(batch: dict[str, np.ndarray], model_dir: str, preprocess_json: str) -> dict[str, np.ndarray]:
    """Ray task: rows ``key, path, rel`` -> ``key, rel, pixels [n, 3, H, W] float32, error`` (``""`` for a
    good row; the reason, as :meth:`Embedder.embed_images` words it, otherwise)."""
    from tki_sdk.runtime.engine.images import ImageLoadError

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
    """Ray actor: one :class:`~tki_sdk.runtime.engine.embedder.Embedder`; batches of pixels -> embeddings."""

    def __init__(self, model_dir: str, precision: str | None, threads: int, gpus: float) -> None:
        from tki_sdk.runtime.engine.embedder import Embedder

        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if gpus > 0 else ["CPUExecutionProvider"]
        self.embedder = Embedder(model_dir, precision=precision, threads=threads, providers=providers)
        self.calls = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        errors = batch["error"]
        ok = np.asarray([not e for e in errors], dtype=bool)
        out = np.zeros((len(errors), self.embedder.embedding_dim), dtype=np.float32)
        if ok.any():
            out[ok] = self.embedder.embed_pixels(batch["pixels"][ok])
            trace_embedded(str(r) for r, good in zip(batch["rel"], ok) if good)
        self._maybe_fail_once()
        return {"key": batch["key"], "embedding": out, "error": errors}

    def _maybe_fail_once(self) -> None:
        marker = os.environ.get(FAULT_ENV)
        if not marker or self.calls < 2:
            return
        try:
            os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            return
        os.kill(os.getpid(), signal.SIGKILL)


def _worker_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("TKI_")}


def _pipeline(ray: Any, todo: Sequence[SourceFile], opts: RayOptions) -> Any:
    rd = ray.data
    env = _worker_env()
    remote: dict[str, Any] = {"runtime_env": {"env_vars": env}} if env else {}
    blocks = max(1, min(math.ceil(len(todo) / opts.batch_size), 1000))
    h, w = _preprocessor(opts.model_dir, json.dumps(opts.preprocess, sort_keys=True)).size
    # A decode task holds a batch of decoded images and their pixels: reserve that memory. (Also what keeps
    # Ray Data from fusing decode into the model actors when both reserve the same CPUs: decode must scale
    # out over all CPUs on its own.)
    decode_memory = opts.batch_size * 3 * h * w * 4 * 3
    ds = rd.from_items([{"key": s.key, "path": s.path, "rel": s.rel} for s in todo], override_num_blocks=blocks)
    ds = ds.map_batches(
        decode_batch, batch_size=opts.batch_size, batch_format="numpy", num_cpus=opts.decode_cpus,
        memory=decode_memory,
        fn_kwargs={"model_dir": opts.model_dir, "preprocess_json": json.dumps(opts.preprocess, sort_keys=True)},
        **remote,
    )
    return ds.map_batches(
        EmbedActor, batch_size=opts.batch_size, batch_format="numpy",
        compute=rd.ActorPoolStrategy(size=opts.actors),
        fn_constructor_kwargs={"model_dir": opts.model_dir, "precision": opts.precision,
                               "threads": opts.actor_threads, "gpus": opts.gpus_per_actor},
        num_cpus=opts.cpus_per_actor, num_gpus=opts.gpus_per_actor or None, **remote,
    )


def embed_ray(todo: Sequence[SourceFile], checkpoints: Checkpointer, opts: RayOptions, *, progress: bool = False) -> int:
    """Embed ``todo`` on Ray Data and hand every row to ``checkpoints`` (see the module docstring).

    Returns the number of good rows received. Pending rows are written on Ctrl-C too.
    """
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        init: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if opts.address is None and not os.environ.get("RAY_ADDRESS"):
            init["num_cpus"] = opts.num_cpus
        ray.init(address=opts.address, **init)
        started = True
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), unit="img", desc="embed (ray)", dynamic_ncols=True)
    by_key = {s.key: s for s in todo}
    seen: set[int] = set()
    good = 0
    try:
        remaining = list(todo)
        for _attempt in range(2):
            for batch in _pipeline(ray, remaining, opts).iter_batches(batch_size=None, batch_format="numpy"):
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
    except KeyboardInterrupt:
        checkpoints.flush()
        raise
    finally:
        if bar is not None:
            bar.close()
        if started:
            ray.shutdown()
    checkpoints.flush()
    return good
