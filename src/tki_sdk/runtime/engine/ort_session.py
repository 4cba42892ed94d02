"""``OrtSession``: an onnxruntime session tuned for GPUs; the CPU when no provider is asked for by name.

What it adds over ``onnxruntime.InferenceSession.run``:

* **Provider choice** (:func:`select_providers`, pure and testable): ``device="auto"`` takes the CUDA execution
  provider when onnxruntime-gpu offers it, else the CPU; ``"tensorrt"`` puts onnxruntime's TensorRT execution
  provider first (fp16, engine + timing cache, an optimisation profile for batch 1..``trt_max_batch``), then
  CUDA for what TensorRT does not take, then CPU. Bare provider names are given these options too.
* **Strict providers**: a provider asked for by name (``device="cuda"`` / ``"tensorrt"``, or an explicit
  ``providers`` list led by a GPU provider) must be the one the session starts on; onnxruntime otherwise falls
  through its list without a word (onnxruntime-gpu lists TensorRT even where ``libnvinfer`` is missing), so
  :class:`ProviderUnavailable` is raised in one line instead. Only ``device="auto"`` falls back (warning).
* **I/O binding** (on by default on CUDA / TensorRT): input and output live in device buffers that are
  allocated once per input shape and reused, so consecutive batches of one size allocate nothing; a host batch
  is copied in with ``OrtValue.update_inplace`` and the output copied back once. :meth:`OrtSession.run_device`
  keeps both on the device (the input as an ``OrtValue`` already there, the output left there).
* **CUDA graphs** (``cuda_graph=True``, CUDA only): a graph needs fixed shapes and fixed buffer addresses, so
  each batch size gets its own session (CUDA provider option ``enable_cuda_graph``, the batch axis pinned with
  ``SessionOptions.add_free_dimension_override_by_name`` so shape arithmetic folds into constants) with input
  and output ``OrtValue`` s bound once. Two warm-up runs (allocation, capture) happen when the size is first
  used or declared in ``graph_batch_sizes``; every later call copies the batch into the bound input in place
  and replays the graph. A batch of another size is padded with zeros to a captured size when that costs at
  most 2x the work, gets its own graph while fewer than ``max_graphs`` exist, and is otherwise chunked.
  Rows are independent in these models, so padding never changes the real rows.
* ``static_shapes=True`` gives the same one-session-per-batch-size scheme without graphs (any provider).

On the CPU execution provider everything runs as a plain session (``io_binding=True`` works there too, into host
buffers). Sessions are safe to call from several threads: bound paths take a lock, plain ``run`` is onnxruntime's
own thread-safe call. Never imports torch.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tki_sdk.runtime.native import import_onnxruntime

log = logging.getLogger(__name__)

__all__ = [
    "OrtSession",
    "SessionConfig",
    "ProviderUnavailable",
    "select_providers",
    "import_onnxruntime",
    "CPU",
    "CUDA",
    "TENSORRT",
    "DEFAULT_TRT_CACHE",
]

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
#: Other accelerators ``device="auto"`` takes (plain runs, no binding), after CUDA.
_OTHER_GPU = ("ROCMExecutionProvider", "DmlExecutionProvider", "CoreMLExecutionProvider")
#: Where onnxruntime's TensorRT provider keeps engines and timing caches unless told otherwise.
DEFAULT_TRT_CACHE = Path(os.environ.get("TKI_TRT_CACHE", Path.home() / ".cache" / "tki-sdk" / "ort-tensorrt"))
_GPU_INSTALL_HINT = (
    "install onnxruntime-gpu in place of onnxruntime (pip uninstall onnxruntime; pip install 'tki-sdk[gpu]') "
    "on a machine with an NVIDIA driver"
)

#: What to do when a requested provider is listed by onnxruntime but does not start.
_NOT_STARTED_HINT = {
    TENSORRT: "TensorRT 10's libnvinfer.so.10 was not found (pip install 'tensorrt-cu13<11' or put it on "
              "LD_LIBRARY_PATH), or ask for device='cuda'",
    CUDA: "CUDA 13 / cuDNN 9 libraries were not found (put NVIDIA's pip libraries, site-packages/nvidia/*/lib, on "
          "LD_LIBRARY_PATH; see benchmarks/gpu/README.md) or there is no NVIDIA driver",
}

_NP_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(bfloat16)": None,
}


class ProviderUnavailable(ValueError):
    """The requested execution provider is not offered by the installed onnxruntime; one-line message."""


def _name(p: str | tuple[str, dict]) -> str:
    return p[0] if isinstance(p, tuple) else p


def _shape_str(name: str, batch: int, chw: Sequence[int]) -> str:
    return f"{name}:{int(batch)}x" + "x".join(str(int(d)) for d in chw)


def _trt_options(
    *,
    device_id: int,
    input_name: str,
    input_chw: Sequence[int] | None,
    max_batch: int,
    opt_batch: int | None,
    fp16: bool,
    cache_dir: str | os.PathLike | None,
    cuda_graph: bool,
) -> dict[str, str]:
    cache = str(Path(cache_dir) if cache_dir is not None else DEFAULT_TRT_CACHE)
    opts = {
        "device_id": str(int(device_id)),
        "trt_fp16_enable": "True" if fp16 else "False",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": cache,
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": cache,
    }
    if input_chw is not None:
        mx = max(1, int(max_batch))
        opt = int(opt_batch) if opt_batch else min(mx, 64)
        opts["trt_profile_min_shapes"] = _shape_str(input_name, 1, input_chw)
        opts["trt_profile_opt_shapes"] = _shape_str(input_name, min(opt, mx), input_chw)
        opts["trt_profile_max_shapes"] = _shape_str(input_name, mx, input_chw)
    if cuda_graph:
        opts["trt_cuda_graph_enable"] = "True"
    return opts


def select_providers(
    available: Sequence[str],
    *,
    device: str = "auto",
    device_id: int = 0,
    cuda_graph: bool = False,
    input_name: str = "pixel_values",
    input_chw: Sequence[int] | None = None,
    trt_max_batch: int = 256,
    trt_opt_batch: int | None = None,
    trt_fp16: bool = True,
    trt_cache_dir: str | os.PathLike | None = None,
    cuda_options: dict[str, Any] | None = None,
    providers: Sequence[str | tuple[str, dict]] | None = None,
) -> list[tuple[str, dict[str, str]]]:
    """The ``(provider, options)`` list for ``InferenceSession(providers=...)``, most preferred first.

    ``providers`` (names or ``(name, options)``) overrides ``device``: each must be in ``available``; bare
    CUDA / TensorRT names get the options below, explicit options are kept (defaults filled underneath).
    Otherwise ``device``:

    * ``"auto"``: CUDA when available (else ROCm / DirectML / CoreML), then CPU. TensorRT only on request: its
      first session builds an engine (minutes for a ViT-B).
    * ``"cuda"`` / ``"tensorrt"`` / ``"cpu"``: that provider (TensorRT followed by CUDA when available), then
      CPU; :class:`ProviderUnavailable` when it is not offered here (and, in :class:`OrtSession`, when it is
      offered but the session does not start on it).

    Options: CUDA ``device_id`` and ``enable_cuda_graph="1"`` when ``cuda_graph``, plus ``cuda_options``;
    TensorRT ``trt_fp16_enable``, ``trt_engine_cache_enable`` / ``trt_timing_cache_enable`` with their paths
    (``trt_cache_dir``, default ``$TKI_TRT_CACHE`` or ``~/.cache/tki-sdk/ort-tensorrt``) and, when ``input_chw``
    is known, ``trt_profile_{min,opt,max}_shapes`` for batch ``1``, ``trt_opt_batch`` (default
    ``min(64, trt_max_batch)``) and ``trt_max_batch``. All values are strings, as onnxruntime expects.
    """
    avail = list(available)
    cuda_opts = {"device_id": str(int(device_id))}
    if cuda_graph:
        cuda_opts["enable_cuda_graph"] = "1"
    cuda_opts.update({str(k): str(v) for k, v in (cuda_options or {}).items()})
    trt_opts = _trt_options(device_id=device_id, input_name=input_name, input_chw=input_chw,
                            max_batch=trt_max_batch, opt_batch=trt_opt_batch, fp16=trt_fp16,
                            cache_dir=trt_cache_dir, cuda_graph=cuda_graph)
    defaults = {CUDA: cuda_opts, TENSORRT: trt_opts}

    if providers is not None:
        out: list[tuple[str, dict[str, str]]] = []
        missing = [_name(p) for p in providers if _name(p) not in avail]
        if missing:
            raise ProviderUnavailable(
                f"onnxruntime providers {missing} not available here; available: {avail}"
                + (f"; {_GPU_INSTALL_HINT}" if any(m in (CUDA, TENSORRT) for m in missing) else "")
            )
        for p in providers:
            name = _name(p)
            given = {str(k): str(v) for k, v in (p[1] if isinstance(p, tuple) else {}).items()}
            out.append((name, {**defaults.get(name, {}), **given}))
        return out

    if device not in ("auto", "cpu", "cuda", "tensorrt"):
        raise ValueError(f"device {device!r} unknown; use auto, cpu, cuda or tensorrt")
    if device == "cpu":
        return [(CPU, {})]
    if device == "tensorrt":
        if TENSORRT not in avail:
            raise ProviderUnavailable(
                f"onnxruntime's TensorRT provider is not available here (available: {avail}); it needs "
                "onnxruntime-gpu and TensorRT's libraries (libnvinfer) on the library path"
            )
        chain = [(TENSORRT, trt_opts)]
        if CUDA in avail:
            chain.append((CUDA, cuda_opts))
        return chain + [(CPU, {})]
    if device == "cuda":
        if CUDA not in avail:
            raise ProviderUnavailable(f"onnxruntime's CUDA provider is not available here (available: {avail}); "
                                      + _GPU_INSTALL_HINT)
        return [(CUDA, cuda_opts), (CPU, {})]
    # auto
    if CUDA in avail:
        return [(CUDA, cuda_opts), (CPU, {})]
    for name in _OTHER_GPU:
        if name in avail:
            return [(name, {}), (CPU, {})]
    return [(CPU, {})]


def _preload_cuda_libraries(ort: Any) -> None:
    """Let onnxruntime-gpu find CUDA / cuDNN from NVIDIA's pip packages (a no-op once torch loaded them)."""
    if "torch" in sys.modules or os.environ.get("TKI_ORT_PRELOAD", "1") == "0":
        return
    fn = getattr(ort, "preload_dlls", None)
    if fn is None:
        return
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            fn()
    except Exception as e:  # noqa: BLE001 - only a convenience; the session reports real failures
        log.debug("onnxruntime.preload_dlls failed: %s", e)
    if buf.getvalue().strip():
        log.debug("onnxruntime.preload_dlls: %s", buf.getvalue().strip())


class _Bound:
    """An I/O binding with its input and output buffers for one input shape."""

    def __init__(self, sess: Any, ort: Any, input_name: str, output_name: str, shape: tuple[int, ...],
                 in_dtype: Any, out_dtype: Any, out_dim: int | None, device: str, device_id: int) -> None:
        self.binding = sess.io_binding()
        self.input = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), in_dtype, device, device_id)
        self.binding.bind_ortvalue_input(input_name, self.input)
        self.output = None
        if out_dim is not None and out_dtype is not None:
            self.output = ort.OrtValue.ortvalue_from_shape_and_type([shape[0], int(out_dim)], out_dtype, device,
                                                                   device_id)
            self.binding.bind_ortvalue_output(output_name, self.output)
        else:  # output shape not known in advance: onnxruntime allocates it on the device each run
            self.binding.bind_output(output_name, device, device_id)

    def result(self) -> Any:
        return self.output if self.output is not None else self.binding.get_outputs()[0]


@dataclass(frozen=True)
class SessionConfig:
    """Every option of an :class:`OrtSession`, grouped (see the class docstring for each one's effect).

    ``OrtSession(path, SessionConfig(device="cpu", threads=2))`` and ``OrtSession(path, device="cpu",
    threads=2)`` are the same; keywords given beside a config override its fields.
    """

    device: str = "auto"
    providers: Sequence[str | tuple[str, dict]] | None = None
    device_id: int = 0
    io_binding: bool | None = None
    cuda_graph: bool = False
    graph_batch_sizes: Sequence[int] | None = None
    max_graphs: int = 4
    static_shapes: bool = False
    threads: int | None = None
    spin: bool = False
    trt_max_batch: int = 256
    trt_opt_batch: int | None = None
    trt_fp16: bool = True
    trt_cache_dir: str | os.PathLike | None = None
    cuda_options: dict[str, Any] | None = None
    input_name: str | None = None
    output_name: str | None = None
    batch_dim_name: str | None = None
    log_severity: int = 3

    @classmethod
    def build(cls, config: "SessionConfig | None", options: dict[str, Any]) -> "SessionConfig":
        """``config`` (default: all defaults) with ``options`` replacing fields; unknown names are a TypeError."""
        unknown = sorted(set(options) - set(cls.__dataclass_fields__))
        if unknown:
            raise TypeError(f"OrtSession got unknown option(s) {unknown}")
        return replace(config or cls(), **options)


class OrtSession:
    """One model on onnxruntime: ``run(x[N,...]) -> y[N,...]`` with the GPU techniques of the module docstring.

    Args:
        model_path: the ``.onnx`` file.
        device: ``"auto"`` | ``"cuda"`` | ``"tensorrt"`` | ``"cpu"`` (see :func:`select_providers`).
        providers: explicit providers (names or ``(name, options)``), overriding ``device``.
        device_id: GPU ordinal.
        io_binding: bind inputs / outputs to reused buffers on the session's device. Default: on for CUDA and
            TensorRT, off elsewhere (on the CPU a plain run already reads the caller's array in place).
        cuda_graph: capture a CUDA graph per batch size (CUDA provider only; ignored with a warning elsewhere).
        graph_batch_sizes: batch sizes to capture now (otherwise on first use).
        max_graphs: how many batch sizes get their own graph / static session.
        static_shapes: one session per batch size with the batch axis fixed, without graphs.
        threads: intra-op threads for the CPU provider; ``spin``: let them spin-wait.
        trt_max_batch / trt_opt_batch / trt_fp16 / trt_cache_dir: TensorRT provider options.
        cuda_options: extra CUDA provider options (strings).
        input_name / output_name: which input / output to use (default: the model's first).
        batch_dim_name: the symbolic batch axis name that ``static_shapes`` / ``cuda_graph`` pin (default: the
            input's first dimension name).

    Attributes: ``providers`` (what the session really runs on, in order), ``provider`` (the first),
    ``device_type`` (``"cuda"`` or ``"cpu"``: where bound buffers live), ``io_binding``, ``cuda_graph``,
    ``static_shapes`` (as in effect), ``input_name``, ``output_name``, ``input_dtype``, ``output_dtype``,
    ``input_shape`` (dims, ``None`` for symbolic), ``output_dim``, ``fixed_batch``, ``captured`` (batch sizes
    with their own session).
    """

    def __init__(self, model_path: str | os.PathLike, config: SessionConfig | None = None, **options: Any) -> None:
        cfg = SessionConfig.build(config, options)
        self.config = cfg
        device, providers, device_id, io_binding = cfg.device, cfg.providers, cfg.device_id, cfg.io_binding
        cuda_graph, graph_batch_sizes, max_graphs = cfg.cuda_graph, cfg.graph_batch_sizes, cfg.max_graphs
        static_shapes, threads, spin = cfg.static_shapes, cfg.threads, cfg.spin
        trt_max_batch, trt_opt_batch, trt_fp16, trt_cache_dir = (cfg.trt_max_batch, cfg.trt_opt_batch, cfg.trt_fp16,
                                                                 cfg.trt_cache_dir)
        cuda_options, input_name, output_name = cfg.cuda_options, cfg.input_name, cfg.output_name
        batch_dim_name, log_severity = cfg.batch_dim_name, cfg.log_severity
        ort = import_onnxruntime()
        self._ort = ort
        self.path = Path(model_path)
        if not self.path.is_file():
            raise FileNotFoundError(f"model file {self.path} does not exist")
        if threads is not None and int(threads) < 1:
            raise ValueError("threads must be >= 1")
        self.device_id = int(device_id)
        self.threads = threads
        self._spin = bool(spin)
        self._log_severity = int(log_severity)
        available = ort.get_available_providers()

        def plan(input_chw: Sequence[int] | None, name: str, graph: bool = False) -> list[tuple[str, dict[str, str]]]:
            return select_providers(
                available, device=device, device_id=self.device_id, cuda_graph=graph, input_name=name,
                input_chw=input_chw, trt_max_batch=trt_max_batch, trt_opt_batch=trt_opt_batch, trt_fp16=trt_fp16,
                trt_cache_dir=trt_cache_dir, cuda_options=cuda_options, providers=providers,
            )

        # The main session never captures graphs (its batch axis is free); the per-batch sessions of
        # cuda_graph get the graph options (``_graph_provider_list``).
        self._provider_list = plan(None, input_name or "pixel_values")
        chw_name = (None, input_name or "pixel_values")
        names = [p[0] for p in self._provider_list]
        if TENSORRT in names:
            # TensorRT's optimisation profile needs the input's name and shape: a first look at the graph
            # (CPU provider, no optimisation), then the provider options again with them.
            probe = self._load(None, [(CPU, {})], optimize=False)
            inp, _ = self._pick_io(probe, input_name, output_name)
            dims = [d if isinstance(d, int) and d > 0 else None for d in (inp.shape or [])]
            chw = dims[1:] if len(dims) == 4 and all(dims[1:]) else None
            self._provider_list = plan(chw, inp.name)
            chw_name: tuple[Any, str] = (chw, inp.name)
            del probe
            trt = dict(self._provider_list[names.index(TENSORRT)][1])
            Path(trt.get("trt_engine_cache_path", DEFAULT_TRT_CACHE)).mkdir(parents=True, exist_ok=True)
        if CUDA in names or TENSORRT in names:
            _preload_cuda_libraries(ort)

        self._session = self._load(None, self._provider_list)
        inp, out = self._pick_io(self._session, input_name, output_name)
        self.input_name, self.output_name = inp.name, out.name
        self.input_dtype = _NP_TYPES.get(inp.type, np.float32) or np.float32
        self.output_dtype = _NP_TYPES.get(out.type)
        self.input_shape: list[int | None] = [d if isinstance(d, int) and d > 0 else None for d in (inp.shape or [])]
        b0 = inp.shape[0] if inp.shape else None
        self.fixed_batch: int | None = int(b0) if isinstance(b0, int) and b0 > 0 else None
        self._batch_dim = batch_dim_name or (b0 if isinstance(b0, str) and b0 else None)
        d1 = out.shape[1] if out.shape and len(out.shape) == 2 else None
        self.output_dim: int | None = int(d1) if isinstance(d1, int) and d1 > 0 else None
        self.providers: list[str] = list(self._session.get_providers())
        self.provider = self.providers[0]
        # A provider asked for by name (device="cuda" / "tensorrt", or an explicit list led by a GPU provider)
        # must be the one that runs: onnxruntime otherwise starts the next one in the list without a word.
        self._requested = names[0] if (providers is not None or device in ("cuda", "tensorrt")) else None
        if self._requested is not None and self._requested != CPU:
            self._require(self._requested, self.providers)
        elif names[0] != self.provider:
            log.warning("onnxruntime could not start %s for %s and runs it on %s", names[0], self.path.name,
                        self.provider)
        on_gpu = self.provider in (CUDA, TENSORRT)
        self.device_type = "cuda" if on_gpu else "cpu"
        self.io_binding = bool(on_gpu if io_binding is None else io_binding)
        graph_ok = bool(cuda_graph) and self.provider in (CUDA, TENSORRT)
        if cuda_graph and not graph_ok:
            log.warning("cuda_graph needs the CUDA execution provider; %s runs without graphs", self.provider)
        self.cuda_graph = graph_ok
        self._graph_provider_list = plan(*chw_name, graph=True) if graph_ok else self._provider_list
        self.static_shapes = bool(static_shapes or graph_ok) and self.fixed_batch is None
        if (static_shapes or graph_ok) and self.fixed_batch is None and self._batch_dim is None:
            raise ValueError(f"{self.path.name}: the input's batch axis has no name to pin; pass batch_dim_name")
        if self.cuda_graph and self.output_dim is None:
            raise ValueError(f"{self.path.name}: cuda_graph needs a static output width; the output is {out.shape}")
        if self.cuda_graph or self.static_shapes:
            self.io_binding = True
        self.max_graphs = max(1, int(max_graphs))
        self._lock = threading.Lock()
        self._bound: OrderedDict[tuple[int, ...], _Bound] = OrderedDict()
        self._static: dict[int, tuple[Any, _Bound, Any]] = {}  # batch -> (session, binding, run options)
        for b in graph_batch_sizes or ():
            self._static_for(int(b), create=True)

    # ------------------------------------------------------------------ construction helpers
    def _session_options(self, batch: int | None = None, optimize: bool = True) -> Any:
        ort = self._ort
        so = ort.SessionOptions()
        so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                       else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        so.log_severity_level = self._log_severity
        if self.threads is not None:
            so.intra_op_num_threads = int(self.threads)
            so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self._spin else "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "1" if self._spin else "0")
        if batch is not None and self._batch_dim:
            so.add_free_dimension_override_by_name(str(self._batch_dim), int(batch))
        return so

    def _load(self, batch: int | None, providers: list[tuple[str, dict[str, str]]], optimize: bool = True) -> Any:
        """A new ``InferenceSession`` of this model (``batch``: the batch axis pinned to it)."""
        try:
            return self._ort.InferenceSession(str(self.path), sess_options=self._session_options(batch, optimize),
                                              providers=providers)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises several types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RuntimeError(f"onnxruntime cannot load {self.path} on {providers[0][0]}: {first}") from None

    def _require(self, requested: str, started: Sequence[str], batch: int | None = None) -> None:
        """:class:`ProviderUnavailable` (one line) unless ``requested`` is the provider the session started on."""
        first = started[0] if started else "no provider"
        if first == requested:
            return
        why = _NOT_STARTED_HINT.get(requested, "check that onnxruntime supports it on this machine")
        where = f" (batch {batch})" if batch is not None else ""
        raise ProviderUnavailable(f"onnxruntime did not start {requested} for {self.path.name}{where}: it started "
                                  f"{first} instead, so nothing runs; {why}")

    @staticmethod
    def _pick_io(sess: Any, input_name: str | None, output_name: str | None) -> tuple[Any, Any]:
        inputs, outputs = sess.get_inputs(), sess.get_outputs()
        in_names, out_names = [i.name for i in inputs], [o.name for o in outputs]
        if input_name is not None and input_name in in_names:
            inp = inputs[in_names.index(input_name)]
        elif len(inputs) == 1 or input_name is None:
            inp = inputs[0]
        else:
            raise ValueError(f"model inputs {in_names} do not include {input_name!r} from tki.json")
        out = outputs[out_names.index(output_name)] if output_name in out_names else outputs[0]
        return inp, out

    @property
    def session(self) -> Any:
        """The underlying ``onnxruntime.InferenceSession`` (dynamic batch)."""
        return self._session

    @property
    def captured(self) -> list[int]:
        """Batch sizes that have their own static (and, with ``cuda_graph``, captured) session."""
        return sorted(self._static)

    def __repr__(self) -> str:
        return (f"OrtSession({self.path.name!r}, provider={self.provider!r}, io_binding={self.io_binding}, "
                f"cuda_graph={self.cuda_graph}, static_shapes={self.static_shapes})")

    # ------------------------------------------------------------------ running
    def _check(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=self.input_dtype)
        if self.input_shape and x.ndim != len(self.input_shape):
            raise ValueError(f"{self.path.name} takes {len(self.input_shape)}-d input, got shape {list(x.shape)}")
        for i, d in enumerate(self.input_shape[1:], start=1):
            if d is not None and x.shape[i] != d:
                raise ValueError(f"{self.path.name} takes input shape {self.input_shape}, got {list(x.shape)}")
        return x

    def run(self, x: np.ndarray) -> np.ndarray:
        """Host array ``x`` (cast to the model's input dtype) -> host output of the model's dtype, row per row.

        A fixed-batch model must get exactly its batch (:class:`~tki_sdk.runtime.Embedder` pads for it).
        """
        x = self._check(x)
        if x.shape[0] == 0:
            width = self.output_dim or 0
            return np.zeros((0, width), dtype=self.output_dtype or np.float32)
        if self.static_shapes:
            return self._run_static(x)
        if not self.io_binding:
            return self._session.run([self.output_name], {self.input_name: x})[0]
        with self._lock:
            b = self._binding_for(tuple(x.shape))
            b.input.update_inplace(x)
            self._session.run_with_iobinding(b.binding)
            return self._to_host(b.result())

    def _to_host(self, value: Any) -> np.ndarray:
        y = value.numpy()
        # On the CPU numpy() views the bound buffer, which the next run overwrites.
        return np.array(y, copy=True) if self.device_type == "cpu" else y

    def _binding_for(self, shape: tuple[int, ...]) -> _Bound:
        b = self._bound.get(shape)
        if b is None:
            b = _Bound(self._session, self._ort, self.input_name, self.output_name, shape, self.input_dtype,
                       self.output_dtype, self.output_dim, self.device_type, self.device_id)
            self._bound[shape] = b
            while len(self._bound) > 4:  # keep the buffers of the few shapes in use
                self._bound.popitem(last=False)
        else:
            self._bound.move_to_end(shape)
        return b

    def to_device(self, x: np.ndarray) -> Any:
        """A copy of ``x`` (as the input dtype) as an ``OrtValue`` on this session's device."""
        return self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(x, dtype=self.input_dtype),
                                                      self.device_type, self.device_id)

    def run_device(self, x: Any) -> Any:
        """Input already on the device (an ``OrtValue`` from :meth:`to_device`) -> output ``OrtValue`` left on the
        device (``.numpy()`` copies it back). The returned value is reused by the next call of the same shape.

        With static shapes / CUDA graphs the input is copied device-to-device into the bound buffer first (the
        graph reads fixed addresses); otherwise it is bound as it is.
        """
        shape = tuple(int(d) for d in x.shape())
        if self.static_shapes:
            with self._lock:
                sess, b, ro = self._static_for(shape[0], create=True)
                b.input.update_inplace(x)
                sess.run_with_iobinding(b.binding, ro)
                return b.result()
        with self._lock:
            b = self._binding_for(shape)
            b.binding.bind_ortvalue_input(self.input_name, x)
            try:
                self._session.run_with_iobinding(b.binding)
            finally:
                b.binding.bind_ortvalue_input(self.input_name, b.input)
            return b.result()

    # ------------------------------------------------------------------ static shapes / CUDA graphs
    def _static_for(self, batch: int, create: bool) -> tuple[Any, _Bound, Any] | None:
        entry = self._static.get(batch)
        if entry is not None or not create:
            return entry
        sess = self._load(batch, self._graph_provider_list)
        if self._requested is not None and self._requested != CPU:
            self._require(self._requested, sess.get_providers(), batch=batch)
        if self.cuda_graph and sess.get_providers()[0] not in (CUDA, TENSORRT):
            raise RuntimeError(f"{self.path.name}: the CUDA-graph session for batch {batch} did not start on CUDA")
        shape = (int(batch), *[int(d) for d in self.input_shape[1:]])
        b = _Bound(sess, self._ort, self.input_name, self.output_name, shape, self.input_dtype, self.output_dtype,
                   self.output_dim, self.device_type, self.device_id)
        ro = self._ort.RunOptions()
        if self.cuda_graph:
            # Two runs with zeros: the first allocates, the next captures; every later run replays.
            b.input.update_inplace(np.zeros(shape, dtype=self.input_dtype))
            for _ in range(2):
                sess.run_with_iobinding(b.binding, ro)
        entry = (sess, b, ro)
        self._static[batch] = entry
        return entry

    def _plan(self, n: int) -> list[tuple[int, int]]:
        """``[(rows, session batch), ...]`` covering ``n`` rows (see the module docstring for the policy)."""
        plan: list[tuple[int, int]] = []
        while n > 0:
            have = sorted(self._static)
            fit = [s for s in have if s >= n]
            if n in have:
                plan.append((n, n))
                break
            if fit and fit[0] <= 2 * n:
                plan.append((n, fit[0]))
                break
            if len(have) < self.max_graphs:
                self._static_for(n, create=True)
                plan.append((n, n))
                break
            if fit:
                plan.append((n, fit[0]))
                break
            big = have[-1]
            plan.append((big, big))
            n -= big
        return plan

    def _run_static(self, x: np.ndarray) -> np.ndarray:
        outs = []
        with self._lock:
            start = 0
            for rows, size in self._plan(x.shape[0]):
                sess, b, ro = self._static_for(size, create=True)
                chunk = x[start:start + rows]
                if rows < size:
                    chunk = np.concatenate([chunk, np.zeros((size - rows, *chunk.shape[1:]), dtype=chunk.dtype)])
                b.input.update_inplace(chunk)
                sess.run_with_iobinding(b.binding, ro)
                outs.append(self._to_host(b.result())[:rows])
                start += rows
        return outs[0] if len(outs) == 1 else np.concatenate(outs)
