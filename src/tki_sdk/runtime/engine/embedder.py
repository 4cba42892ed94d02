"""``Embedder``: exported TKI model (ONNX via onnxruntime, or a TensorRT plan) + CLIP-exact preprocessing.

Reads only the export folder: ``tki.json`` (:class:`~tki_sdk.common.model_metadata.ModelMetadata`) and the
model file it names. No torch anywhere.

::

    emb = Embedder("export_dir")                       # CPU: the fastest artifact + engine, measured once
    emb = Embedder("export_dir", precision="int8", threads=2)
    res = emb.embed_images(["a.jpg", b"...png bytes...", pil_image])
    res.embeddings   # float32 [M, D], one row per good item
    res.indices      # int64 [M], position of each row in the input
    res.errors       # [(item, reason), ...] for the items that could not be read
    q = emb.embed_texts(["a dog on a beach"])   # float32 [1, D], same space (exports with a text artifact)
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from tki_sdk.common.artifacts import (
    ONNX,
    ONNXRUNTIME,
    OPENVINO,
    TENSORRT_PLAN,
    artifact_kind,
    batch_invariant,
)
from tki_sdk.common.model_metadata import METADATA_FILE, ModelMetadata
from tki_sdk.common.progress import progress_bar
from tki_sdk.runtime.engine.artifact_check import VERIFY_MODES, checked_artifact_path
from tki_sdk.runtime.engine.images import ImageItem, ImageLoadError
from tki_sdk.runtime.engine.openvino_runner import openvino_version
from tki_sdk.runtime.engine.ort_session import TENSORRT, OrtSession
from tki_sdk.runtime.engine.preprocess import Preprocessor
from tki_sdk.runtime.engine.tensorrt_runner import tensorrt_version
from tki_sdk.runtime.native import import_onnxruntime

log = logging.getLogger(__name__)

__all__ = ["Embedder", "EmbedResult", "available_backends", "MAX_BATCH_SIZE"]

#: Largest batch of the optimisation profile given to onnxruntime's TensorRT provider (embed_pixels chunks).
_TRT_EP_MAX_BATCH = 256
#: Largest ``batch_size`` of :meth:`Embedder.embed_images` (its buffers hold ``3 * batch_size`` preprocessed
#: images: ~1.8 GB at 224 px); :meth:`Embedder.embed_pixels` runs larger inputs in chunks of this size.
MAX_BATCH_SIZE = 1024


@dataclass
class EmbedResult:
    """Output of :meth:`Embedder.embed_images`.

    ``embeddings[i]`` is the embedding of ``items[indices[i]]``; every item not in ``indices`` has exactly one
    ``(item, reason)`` entry in ``errors``. ``stats`` holds timings: ``wall_s`` (whole call), ``infer_s`` (time
    inside the model), ``decode_s`` (decode + preprocess, summed over worker threads), ``images`` (good items).
    """

    embeddings: np.ndarray
    indices: np.ndarray
    errors: list[tuple[Any, str]] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])


def available_backends() -> dict[str, Any]:
    """What this environment can run: onnxruntime providers, and whether ``openvino`` and ``tensorrt`` import."""
    out: dict[str, Any] = {"onnxruntime": None, "openvino": None, "tensorrt": None}
    try:
        from tki_sdk.runtime.native import import_onnxruntime

        ort = import_onnxruntime()
        out["onnxruntime"] = {"version": ort.__version__, "providers": ort.get_available_providers()}
    except ImportError:
        pass

    if openvino_version():
        out["openvino"] = {"version": openvino_version()}

    if tensorrt_version():
        out["tensorrt"] = {"version": tensorrt_version()}
    return out


def _cuda_offered() -> bool:
    """onnxruntime offers the CUDA provider (onnxruntime-gpu): the GPU path keeps its own choice."""
    try:
        from tki_sdk.runtime.native import import_onnxruntime

        return "CUDAExecutionProvider" in import_onnxruntime().get_available_providers()
    except ImportError:
        return False


class Embedder:
    """Images -> embeddings with an exported TKI model.

    Args:
        model_dir: folder written by ``tki-export`` (holds ``tki.json``), or the ``tki.json`` path itself.
        backend: ``"onnxruntime"`` (ONNX files), ``"openvino"`` (ONNX files on OpenVINO, the ``[openvino]``
            extra), ``"tensorrt"`` (a serialized TensorRT plan, ``model.plan``; needs the ``tensorrt`` and
            ``cuda-python`` packages and a GPU), or ``"auto"`` (default). ``auto`` with no ``precision`` and no
            ``providers`` on a machine without CUDA runs the artifact and engine measured fastest here among
            those that passed parity (:mod:`~tki_sdk.runtime.engine.engine_choice`: measured at the first load, then
            cached per CPU and package versions; ``engine_choice`` says what and why); otherwise the artifact's
            recorded runtime (TensorRT for a plan, OpenVINO for ``openvino_int8``, onnxruntime else).
        precision: key of ``tki.json``'s ``artifacts`` (``"fp32"``, ``"fp16"``, ``"int8"``, ``"openvino_int8"``,
            ``"tensorrt_fp16"``, ...); default: the measured choice (above), else ``default_precision`` (for
            ``backend="tensorrt"``: the first ``tensorrt*`` artifact; ``"openvino"``: ``openvino_int8`` when
            exported). Defaults are batch-invariant: an artifact whose vector for one image depends on the other
            images of its batch (per-tensor dynamic int8, :func:`~tki_sdk.common.artifacts.batch_invariant`) is
            never picked by itself (a ``default_precision`` naming one falls back to fp32); named here it runs,
            with a warning, and ``batch_invariant`` is False.
        providers: onnxruntime execution providers, in order of preference. Default: CUDA when onnxruntime-gpu
            offers it, then CPU. TensorRT through onnxruntime (``"TensorrtExecutionProvider"``) builds an engine
            when the session starts (minutes for a ViT-B; cached after that), so it is used only when asked for
            here; the prebuilt plan (``backend="tensorrt"``) avoids that. Bare CUDA / TensorRT names get the
            options of :func:`~tki_sdk.runtime.engine.ort_session.select_providers` (TensorRT: fp16, engine and timing
            cache in ``$TKI_TRT_CACHE``, a profile for batch 1..256); ``(name, options)`` pairs override them.
        threads: intra-op threads for onnxruntime on CPU (default: onnxruntime's choice, all cores).
        preprocess: options for :class:`~tki_sdk.runtime.engine.preprocess.Preprocessor` (``exif_transpose``,
            ``draft``, ``max_pixels``).
        spin: let onnxruntime's CPU threads spin-wait between operators. Off by default: spinning threads
            take the cores the decode threads of :meth:`embed_images` need (on 2 cores, end-to-end img/s
            rose ~1.6x with it off); turn it on for pure :meth:`embed_pixels` throughput.
        io_binding: on the CUDA / TensorRT providers (default on there), bind input and output to GPU buffers
            allocated once per batch shape and reused batch after batch
            (:class:`~tki_sdk.runtime.engine.ort_session.OrtSession`); ``False``: plain ``session.run``.
        cuda_graph: capture one CUDA graph per batch size and replay it (CUDA provider only; ignored with a
            warning elsewhere). The first batch of each size costs two extra runs; a smaller batch is padded to
            a captured size when that at most doubles its work.
        verify: how the model file is checked against ``tki.json`` before it is opened
            (:mod:`~tki_sdk.runtime.engine.artifact_check`): ``"sha256"`` (default: size and full hash) or ``"size"``
            (skips the hash, so a same-size file with other weights goes undetected). Either way a ``file``
            outside the export folder (absolute, ``..``) is refused. Failures raise
            :class:`~tki_sdk.runtime.engine.artifact_check.ArtifactCheckError` (a ``ValueError``).

    Attributes: ``metadata``, ``preprocessor``, ``backend``, ``precision``, ``model_path``, ``provider`` (what
    actually runs: e.g. ``"CPUExecutionProvider"``, ``"CUDAExecutionProvider"``, ``"TensorRT"``,
    ``"OpenVINO CPU"``), ``engine_choice`` (:class:`~tki_sdk.runtime.engine.engine_choice.EngineChoice`: what
    ``auto`` chose and why; ``None`` when backend or precision were given),
    ``io_binding`` and ``cuda_graph`` (as in effect; onnxruntime only),
    ``embedding_dim``, ``model_fingerprint`` (:meth:`ModelMetadata.fingerprint`: identifies the model for
    galleries), ``batch_invariant`` (False only for a batch-dependent artifact chosen by name),
    ``verified`` (what was checked of the model file: ``"sha256"``, ``"size (sha256 skipped)"``,
    ...). All methods are safe to call from several threads at once.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        backend: str = "auto",
        precision: str | None = None,
        providers: Sequence[str | tuple[str, dict]] | None = None,
        threads: int | None = None,
        preprocess: dict[str, Any] | None = None,
        spin: bool = False,
        io_binding: bool | None = None,
        cuda_graph: bool = False,
        verify: str = "sha256",
    ) -> None:
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify={verify!r} unknown; use one of {', '.join(VERIFY_MODES)}")
        self._verify = verify
        self.verified = "nothing recorded"
        self.batch_invariant = True
        if backend not in ("auto", "onnxruntime", "openvino", "tensorrt"):
            raise ValueError(f"backend {backend!r} unknown; use auto, onnxruntime, openvino or tensorrt")
        p = Path(model_dir)
        if not p.exists():
            raise FileNotFoundError(f"model folder {p} does not exist; give the folder written by tki-export")
        self.model_dir = p if p.is_dir() else p.parent
        self.metadata = ModelMetadata.load(p)
        self.preprocessor = Preprocessor.from_metadata(self.metadata, **(preprocess or {}))
        self.embedding_dim = int(self.metadata.embedding_dim)
        self.model_fingerprint = self.metadata.fingerprint()
        if threads is not None and int(threads) < 1:
            raise ValueError("threads must be >= 1")
        self.engine_choice = None
        self._text_encoder: Any = None
        self._text_lock = threading.Lock()
        if backend == "auto" and precision is None and providers is None and not _cuda_offered():
            from tki_sdk.runtime.engine.engine_choice import choose_engine

            self.engine_choice = choose_engine(self.metadata, self.model_dir, threads)
            if self.engine_choice.precision is not None:
                precision, backend = self.engine_choice.precision, str(self.engine_choice.engine)
        self.precision, self.model_path = self._pick_artifact(backend, precision)
        is_plan = self._artifact_format(self.precision) == TENSORRT_PLAN
        runtime = self._artifact_runtime(self.precision)
        if backend == "auto":
            backend = "tensorrt" if is_plan else ("openvino" if runtime == OPENVINO else "onnxruntime")
        if backend in ("onnxruntime", "openvino") and is_plan:
            raise ValueError(f"{self.model_path.name} is a TensorRT plan; use backend='tensorrt' or an ONNX precision")
        if backend == "onnxruntime" and runtime == OPENVINO:
            raise ValueError(f"artifact {self.precision!r} was validated on OpenVINO; use backend='openvino' "
                             "(pip install 'tki-sdk[openvino]') or another precision")
        if backend == "tensorrt" and not is_plan:
            raise ValueError(
                f"artifact {self.precision!r} ({self.model_path.name}) is not a TensorRT plan; "
                "export one with tki-export --tensorrt or use backend='onnxruntime'"
            )
        self.backend = backend
        self._lock = threading.Lock()
        if backend == "tensorrt":
            from tki_sdk.runtime.engine.tensorrt_runner import TensorRTRunner

            self._runner: Any = TensorRTRunner(self.model_path, self.metadata.input_name, self.metadata.output_name)
            self.provider = "TensorRT"
            self.io_binding, self.cuda_graph = False, False  # the plan runner has its own device buffers
            self._input_dtype = self._runner.input_dtype
            self._fixed_batch: int | None = None if self._runner.dynamic_batch else self._runner.max_batch
            self._max_batch = self._runner.max_batch
        elif backend == "openvino":
            from tki_sdk.runtime.engine.openvino_runner import OpenVINORunner

            self.threads = threads
            self._runner = OpenVINORunner(self.model_path, threads, input_name=self.metadata.input_name,
                                          output_name=self.metadata.output_name)
            self.provider = self._runner.provider
            self.io_binding, self.cuda_graph = False, False
            self._input_dtype = self._runner.input_dtype
            self._fixed_batch, self._max_batch = None, None
        else:
            self._init_onnxruntime(providers, threads, spin, io_binding, cuda_graph)
        log.info(
            "Embedder: %s on %s (%s, %s), embedding dim %d",
            self.backend, self.provider, self.precision, self.model_path.name, self.embedding_dim,
        )

    # ------------------------------------------------------------------ setup
    def _pick_artifact(self, backend: str, precision: str | None) -> tuple[str, Path]:
        arts = self.metadata.artifacts or {}
        if precision is None:
            if backend == "tensorrt":
                trt_keys = sorted(k for k in arts if k.startswith("tensorrt"))
                if not trt_keys:
                    raise ValueError(
                        f"{self.model_dir} has no TensorRT plan (artifacts: {sorted(arts) or 'none'}); "
                        "export one with tki-export --tensorrt"
                    )
                precision = "tensorrt_fp16" if "tensorrt_fp16" in trt_keys else trt_keys[0]
            elif backend == "openvino":
                precision = "openvino_int8" if "openvino_int8" in arts else "fp32"
            else:
                precision = self.metadata.default_precision or "fp32"
                if backend == "onnxruntime" and precision in arts and self._artifact_format(precision) != ONNX:
                    precision = "fp32"
                if precision in arts and precision != "fp32" and "fp32" in arts and not batch_invariant(
                        precision, arts[precision]):
                    log.warning("default precision %s is batch-dependent (an image's vector changes with its "
                                "batch-mates); running fp32 instead (pass precision=%r to use it anyway)",
                                precision, precision)
                    precision = "fp32"
        if not arts:
            if precision == "fp32" and (self.model_dir / "model.onnx").is_file():
                self.verified = "nothing recorded"
                return precision, self.model_dir / "model.onnx"
            raise ValueError(f"{self.model_dir / METADATA_FILE} lists no model artifacts; re-export the model")
        if precision not in arts:
            raise ValueError(f"precision {precision!r} not in this export; available: {', '.join(sorted(arts))}")
        entry = arts[precision]
        if not isinstance(entry, dict) or not entry.get("file"):
            raise ValueError(f"artifact {precision!r} in tki.json has no 'file' entry; re-export the model")
        self.batch_invariant = batch_invariant(precision, entry)
        if not self.batch_invariant:
            log.warning("artifact %s (%s int8) is batch-dependent: an image's vector changes with the other "
                        "images of its batch; use another precision where vectors are compared or cached",
                        precision, entry.get("scheme"))
        path, self.verified = checked_artifact_path(self.model_dir, precision, entry, self._verify)
        if not path.is_file():
            raise FileNotFoundError(f"model file {path} (precision {precision}) is missing; re-export or copy it")
        return precision, path

    def _artifact_format(self, key: str) -> str:
        """The artifact's recorded ``format``; exports that predate the field: the artifact table's."""
        fmt = (self.metadata.artifacts or {}).get(key, {}).get("format")
        if fmt:
            return str(fmt)
        try:
            return artifact_kind(key).format
        except KeyError:
            return ONNX

    def _artifact_runtime(self, key: str) -> str:
        """The artifact's recorded ``runtime``; exports that predate the field: the artifact table's."""
        rt = (self.metadata.artifacts or {}).get(key, {}).get("runtime")
        if rt:
            return str(rt)
        try:
            return artifact_kind(key).runtime
        except KeyError:
            return ONNXRUNTIME

    def _init_onnxruntime(self, providers: Sequence[Any] | None, threads: int | None, spin: bool,
                          io_binding: bool | None, cuda_graph: bool) -> None:

        import_onnxruntime()  # refuses, in one line, an import order that would crash the process
        if threads is not None and int(threads) < 1:
            raise ValueError("threads must be >= 1")
        self.threads = threads
        self._ort = OrtSession(
            self.model_path, providers=providers, threads=threads, spin=spin, io_binding=io_binding,
            cuda_graph=cuda_graph, input_name=self.metadata.input_name, output_name=self.metadata.output_name,
            trt_max_batch=_TRT_EP_MAX_BATCH,
        )
        self._session = self._ort.session
        self.provider = self._ort.provider
        self.io_binding = self._ort.io_binding
        self.cuda_graph = self._ort.cuda_graph
        self._input_name = self._ort.input_name
        self._output_name = self._ort.output_name
        self._input_dtype = self._ort.input_dtype
        self._fixed_batch = self._ort.fixed_batch
        # onnxruntime's TensorRT provider only takes batches inside its optimisation profile
        self._max_batch = _TRT_EP_MAX_BATCH if self.provider == TENSORRT else None

    def __repr__(self) -> str:
        return (
            f"Embedder({str(self.model_dir)!r}, backend={self.backend!r}, precision={self.precision!r}, "
            f"provider={self.provider!r}, dim={self.embedding_dim})"
        )

    # ------------------------------------------------------------------ inference
    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) the model takes."""
        return self.preprocessor.size

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Preprocessed pixels float ``[N, 3, H, W]`` -> float32 embeddings ``[N, D]`` (rows as the model outputs
        them; TKI exports are already L2-normalised). ``N = 0`` gives ``[0, D]``."""
        x = np.asarray(pixels)
        h, w = self.input_size
        if x.ndim != 4 or x.shape[1:] != (3, h, w):
            raise ValueError(f"embed_pixels expects [N, 3, {h}, {w}] (use the Preprocessor); got {list(x.shape)}")
        n = x.shape[0]
        if n == 0:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        x = np.ascontiguousarray(x, dtype=self._input_dtype)
        step = self._fixed_batch or self._max_batch or MAX_BATCH_SIZE
        if n == step or (n < step and not self._fixed_batch):
            out = self._run(x)
        else:
            parts = []
            for s in range(0, n, step):
                chunk = x[s : s + step]
                m = chunk.shape[0]
                if self._fixed_batch and m < step:
                    chunk = np.concatenate([chunk, np.zeros((step - m, *chunk.shape[1:]), dtype=chunk.dtype)])
                parts.append(self._run(chunk)[:m])
            out = np.concatenate(parts)
        return np.ascontiguousarray(out, dtype=np.float32)

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self.backend == "tensorrt":
            with self._lock:
                return self._runner.run(x)
        if self.backend == "openvino":
            return self._runner.run(x)  # one infer request behind the runner's own lock
        # OrtSession: plain runs are onnxruntime's thread-safe call, bound buffers are locked.
        return self._ort.run(x)

    def embed_images(
        self,
        items: Iterable[ImageItem],
        batch_size: int = 32,
        workers: int | None = None,
        progress: bool | Callable[[int, int], None] = False,
        prefetch_batches: int = 2,
    ) -> EmbedResult:
        """Decode, preprocess and embed paths / encoded bytes / PIL images; bad items are reported, not raised.

        Decoding and preprocessing run in a pool of ``workers`` threads (default ``min(8, cpu_count)``) over a
        bounded window of ``prefetch_batches * batch_size`` items, while the calling thread runs the model on
        the previous batch; input order is kept. ``progress``: ``True`` for progress (:mod:`tki_sdk.common.progress`), or a callable
        ``(done, total)``. ``1 <= batch_size <= MAX_BATCH_SIZE`` (1,024).
        """
        batch_size = int(batch_size)
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if batch_size > MAX_BATCH_SIZE:
            raise ValueError(f"batch size {batch_size:,} is too large: use at most {MAX_BATCH_SIZE:,} "
                             "(larger batches only cost memory)")
        items = list(items)
        total = len(items)
        workers = int(workers) if workers else min(8, os.cpu_count() or 1)
        h, w = self.input_size
        t0 = time.perf_counter()
        decode_s = [0.0]
        decode_lock = threading.Lock()

        def prep(item: ImageItem) -> np.ndarray:
            s = time.perf_counter()
            try:
                return self.preprocessor.process(item)
            finally:
                d = time.perf_counter() - s
                with decode_lock:
                    decode_s[0] += d

        bar = progress_bar(total, "embed", unit="img") if progress is True else None
        callback = progress if callable(progress) else None

        embeddings: list[np.ndarray] = []
        indices: list[int] = []
        errors: list[tuple[Any, str]] = []
        infer_s = 0.0
        buf = np.empty((batch_size, 3, h, w), dtype=np.float32)
        buf_idx: list[int] = []
        done = 0

        def flush() -> None:
            nonlocal infer_s
            if not buf_idx:
                return
            s = time.perf_counter()
            embeddings.append(self.embed_pixels(buf[: len(buf_idx)]))
            infer_s += time.perf_counter() - s
            indices.extend(buf_idx)
            buf_idx.clear()

        window: deque[tuple[int, Any, Future]] = deque()
        it = iter(enumerate(items))
        limit = max(1, prefetch_batches) * batch_size
        try:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tki-decode") as pool:

                def submit_next() -> None:
                    nxt = next(it, None)
                    if nxt is not None:
                        window.append((nxt[0], nxt[1], pool.submit(prep, nxt[1])))

                for _ in range(limit):
                    submit_next()
                while window:
                    i, item, fut = window.popleft()
                    submit_next()
                    try:
                        buf[len(buf_idx)] = fut.result()
                        buf_idx.append(i)
                    except ImageLoadError as e:
                        errors.append((item, e.reason))
                    except Exception as e:  # any other decoder failure stays with its item
                        errors.append((item, f"{type(e).__name__}: {e}"))
                    if len(buf_idx) == batch_size:
                        flush()
                    done += 1
                    if bar is not None:
                        bar.update(1)
                    if callback is not None:
                        callback(done, total)
                flush()
        finally:
            if bar is not None:
                bar.close()
        emb = np.concatenate(embeddings) if embeddings else np.zeros((0, self.embedding_dim), dtype=np.float32)
        stats = {
            "images": float(len(indices)),
            "errors": float(len(errors)),
            "wall_s": time.perf_counter() - t0,
            "infer_s": infer_s,
            "decode_s": decode_s[0],
        }
        return EmbedResult(emb, np.asarray(indices, dtype=np.int64), errors, stats)

    def embed_image(self, item: ImageItem) -> np.ndarray:
        """One item -> float32 ``[D]``; raises :class:`ImageLoadError` when it cannot be read."""
        x = self.preprocessor.process(item)
        return self.embed_pixels(x[None])[0]

    # ------------------------------------------------------------------ text
    @property
    def has_text(self) -> bool:
        """True when the export carries a text encoder (:meth:`embed_texts` works)."""
        return self.metadata.has_text

    @property
    def text_encoder(self) -> Any:
        """The export's :class:`~tki_sdk.runtime.engine.text_encoder.TextEncoder`, built at first use: its files
        checked against ``tki.json`` as the image model's (``verify``), run by onnxruntime on the image model's
        CUDA / CPU provider with the same ``threads``. :class:`~.text_encoder.TextUnavailableError` (a
        ``ValueError``, one line naming the fix) for an export without a text artifact."""
        with self._text_lock:
            if self._text_encoder is None:
                from tki_sdk.runtime.engine.text_encoder import TextEncoder

                providers = None
                if getattr(self, "_ort", None) is not None:
                    providers = [p for p in self._ort.session.get_providers()
                                 if p in ("CUDAExecutionProvider", "CPUExecutionProvider")] or None
                self._text_encoder = TextEncoder.from_metadata(
                    self.metadata, self.model_dir, verify=self._verify, threads=getattr(self, "threads", None),
                    providers=providers)
            return self._text_encoder

    def embed_texts(self, texts: Iterable[str] | str, template: str | None = None, batch_size: int = 64) -> np.ndarray:
        """Texts -> float32 ``[N, D]`` in the images' space (for searching a gallery of this model by words).

        ``template``: ``"raw"`` (the text as typed), a string with ``{}`` (e.g. ``"a photo of a {}."``), or
        ``"ensemble"`` (TKI: the text in each learned domain prompt, the P embeddings averaged in the head's
        space); ``None``: the export's default (the ensemble for a TKI head, the template for vanilla CLIP;
        :mod:`~tki_sdk.runtime.engine.text_encoder` gives the formulas and the reason). ``batch_size`` rows go
        through the text graph per call."""
        return self.text_encoder.embed(texts, template=template, batch_size=batch_size)
