"""The backends of ``tki-bench gpu`` (the table in :mod:`tki_sdk.benchmarks.gpu_throughput`) and the timer.

Each backend is a :class:`Backend`: ``run(host array) -> host float32`` for parity, ``prepare(host array) ->
step`` for timing (the step's input already where the backend wants it), ``sync`` to wait for the device, and
its parity threshold from the artifact table (fp32 0.99999; every fp16 / TensorRT path 0.999).
"""
from __future__ import annotations

import contextlib
import copy
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tki_sdk.common.artifacts import ARTIFACT_KINDS

__all__ = ["Backend", "measure", "count_flops", "ALL_BACKENDS", "PARITY_BATCH", "FP16_THRESHOLD", "FP32_THRESHOLD"]

FP16_THRESHOLD = ARTIFACT_KINDS["fp16"].parity_threshold
FP32_THRESHOLD = ARTIFACT_KINDS["fp32"].parity_threshold
PARITY_BATCH = 32
ALL_BACKENDS = ("torch-fp32", "torch-fp16", "torch-fp16-compile", "torch-fp16-cudagraph", "ort-fp32-cuda",
                "ort-fp16-cuda-host", "ort-fp16-cuda-iobind", "ort-fp16-cuda-graph", "ort-fp16-tensorrt-ep",
                "tensorrt-plan")


# ------------------------------------------------------------------------------------------------ backends
@dataclass
class Backend:
    """One inference path.

    ``host_run(x)``: float32 numpy ``[N,3,H,W]`` -> float32 numpy ``[N,D]`` (for parity). ``prepare(x)``: given
    the host batch, puts it where this path takes its input and returns ``step()`` (one inference on it);
    ``sync()`` waits for the device. ``threshold``: parity threshold. ``max_batch``: largest batch it takes.
    """

    name: str
    kind: str
    input: str
    host_run: Callable[[np.ndarray], np.ndarray]
    prepare: Callable[[np.ndarray], Callable[[], Any]]
    sync: Callable[[], None]
    threshold: float
    setup_s: float = 0.0
    max_batch: int | None = None
    info: dict[str, Any] = field(default_factory=dict)


def _noop() -> None:
    return None


def measure(step: Callable[[], Any], sync: Callable[[], None], batch: int, *, seconds: float = 2.0,
            warmup: int = 5, min_iters: int = 3) -> dict[str, float]:
    """Latency percentiles from synchronised calls (first half of ``seconds``) and ``images_per_s`` from
    back-to-back calls with one final synchronisation (second half), after ``warmup`` calls.

    ``images_per_s = batch * k / t`` for ``k`` calls taking ``t`` seconds; ``pXX_ms`` per call (batch).
    """
    for _ in range(max(0, warmup)):
        step()
        sync()
    half = max(0.0, float(seconds)) / 2
    lat: list[float] = []
    end = time.perf_counter() + half
    while len(lat) < min_iters or time.perf_counter() < end:
        t0 = time.perf_counter()
        step()
        sync()
        lat.append(time.perf_counter() - t0)
    med = statistics.median(lat)
    k = int(min(100_000, max(min_iters, round(half / max(med, 1e-6)))))
    t0 = time.perf_counter()
    for _ in range(k):
        step()
    sync()
    dt = time.perf_counter() - t0
    ms = np.asarray(lat) * 1000.0
    return {
        "images_per_s": batch * k / dt,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "latency_calls": len(lat),
        "throughput_calls": k,
    }


def _torch_backends(model: Any, wanted: set[str], device: Any, compile_mode: str, notes: dict[str, str]) -> list[Backend]:
    """The PyTorch paths on ``device``: a CUDA device, or the CPU for the rehearsal (``--dry-run``), where the
    eager fp32 / fp16 paths run and the CUDA-graph and compiled ones are noted as skipped, never faked.
    Each backend's ``info["provider"]`` is ``torch:<device>`` (with the GPU's name on CUDA)."""
    import torch
    from torch import nn

    on_cuda = torch.device(device).type == "cuda"
    where = f"torch:{torch.device(device)}" + (f" ({torch.cuda.get_device_name(device)})" if on_cuda else "")

    class HalfVisual(nn.Module):
        """Visual encoder in float16: float32 pixels in, float32 features out (the head stays float32)."""

        def __init__(self, visual: nn.Module) -> None:
            super().__init__()
            self.visual = visual.half()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.visual(x.half()).float()

    def sync() -> None:
        if on_cuda:
            torch.cuda.synchronize(device)

    def host(fn: Callable[[Any], Any]) -> Callable[[np.ndarray], np.ndarray]:
        def run(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                y = fn(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device))
                return y.float().cpu().numpy()
        return run

    def prep(fn: Callable[[Any], Any], before: Callable[[], None] = _noop) -> Callable[[np.ndarray], Callable[[], Any]]:
        def prepare(x: np.ndarray) -> Callable[[], Any]:
            xd = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)

            def step() -> Any:
                before()
                with torch.no_grad():
                    return fn(xd)
            return step
        return prepare

    out: list[Backend] = []
    m32 = copy.deepcopy(model).to(device).eval()
    if "torch-fp32" in wanted:
        out.append(Backend("torch-fp32", "torch", "device", host(m32.encode_image), prep(m32.encode_image), sync,
                           FP32_THRESHOLD, info={"tf32": False, "provider": where}))
    need16 = {"torch-fp16", "torch-fp16-compile", "torch-fp16-cudagraph"} & wanted
    if not need16:
        return out
    m16 = copy.deepcopy(model).to(device).eval()
    m16.visual = HalfVisual(m16.visual)
    if "torch-fp16" in wanted:
        out.append(Backend("torch-fp16", "torch", "device", host(m16.encode_image), prep(m16.encode_image), sync,
                           FP16_THRESHOLD, info={"provider": where}))
    if not on_cuda:
        for name in ("torch-fp16-compile", "torch-fp16-cudagraph"):
            if name in wanted:
                notes[name] = f"needs a CUDA device (this run is on {torch.device(device)})"
        return out
    if "torch-fp16-compile" in wanted:
        if compile_mode == "none":
            notes["torch-fp16-compile"] = "--compile-mode none"
        else:
            compiled = torch.compile(m16, mode=None if compile_mode == "default" else compile_mode, dynamic=False)
            graphs = "reduce-overhead" in compile_mode or compile_mode == "max-autotune"
            mark = getattr(torch.compiler, "cudagraph_mark_step_begin", _noop) if graphs else _noop

            def run_compiled(x: Any) -> Any:
                mark()
                y = compiled(x)
                return y.clone() if graphs else y  # cudagraph outputs are overwritten by the next replay

            out.append(Backend("torch-fp16-compile", "torch", "device", host(run_compiled),
                               prep(compiled, before=mark), sync, FP16_THRESHOLD,
                               info={"mode": compile_mode, "provider": where}))
    if "torch-fp16-cudagraph" in wanted:
        graphs: dict[tuple[int, ...], tuple[Any, Any, Any]] = {}

        def graphed(x: Any) -> Any:
            key = tuple(x.shape)
            if key not in graphs:
                static_in = x.clone()
                s = torch.cuda.Stream(device)
                s.wait_stream(torch.cuda.current_stream(device))
                with torch.no_grad(), torch.cuda.stream(s):
                    for _ in range(3):
                        m16.encode_image(static_in)
                torch.cuda.current_stream(device).wait_stream(s)
                g = torch.cuda.CUDAGraph()
                with torch.no_grad(), torch.cuda.graph(g):
                    static_out = m16.encode_image(static_in)
                graphs[key] = (g, static_in, static_out)
            g, static_in, static_out = graphs[key]
            static_in.copy_(x)
            g.replay()
            return static_out

        out.append(Backend("torch-fp16-cudagraph", "torch", "device", host(lambda x: graphed(x).clone()),
                           prep(graphed), sync, FP16_THRESHOLD, info={"provider": where + ", CUDA graph"}))
    return out


def _ort_backends(paths: dict[str, Path], wanted: set[str], device: str, batches: Sequence[int], notes: dict[str, str],
                  trt_cache: Path | None = None, device_id: int = 0) -> list[Backend]:
    """The onnxruntime paths. ``device="cuda"`` on a GPU; ``"cpu"`` runs the same plumbing on the CPU provider
    (used by the tests)."""
    from tki_sdk.runtime.native import import_onnxruntime
    from tki_sdk.runtime.engine.ort_session import CPU, CUDA, TENSORRT, OrtSession, ProviderUnavailable

    ort = import_onnxruntime()
    available = ort.get_available_providers()
    out: list[Backend] = []

    def device_prepare(sess: OrtSession) -> Callable[[np.ndarray], Callable[[], Any]]:
        def prepare(x: np.ndarray) -> Callable[[], Any]:
            xv = sess.to_device(x)
            return lambda: sess.run_device(xv)
        return prepare

    def host_prepare(sess: OrtSession) -> Callable[[np.ndarray], Callable[[], Any]]:
        def prepare(x: np.ndarray) -> Callable[[], Any]:
            xh = np.ascontiguousarray(x, dtype=np.float32)
            return lambda: sess.run(xh)
        return prepare

    def f32(sess: OrtSession) -> Callable[[np.ndarray], np.ndarray]:
        return lambda x: np.asarray(sess.run(x), dtype=np.float32)

    specs: list[tuple[str, str, dict[str, Any], str, float]] = [
        ("ort-fp32-cuda", "fp32", {"io_binding": True, "cuda_options": {"use_tf32": "0"}}, "device", FP32_THRESHOLD),
        ("ort-fp16-cuda-host", "fp16", {"io_binding": False}, "host", FP16_THRESHOLD),
        ("ort-fp16-cuda-iobind", "fp16", {"io_binding": True}, "device", FP16_THRESHOLD),
        ("ort-fp16-cuda-graph", "fp16", {"cuda_graph": True, "graph_batch_sizes": sorted({1, PARITY_BATCH, *batches}),
                                         "max_graphs": len(set(batches)) + 2}, "device", FP16_THRESHOLD),
        ("ort-fp16-tensorrt-ep", "fp32", {"trt_max_batch": max(batches), "trt_cache_dir": trt_cache}, "device",
         FP16_THRESHOLD),
    ]
    for name, art, opts, inp, thr in specs:
        if name not in wanted:
            continue
        if art not in paths:
            notes[name] = f"no {art} artifact in the export"
            continue
        dev = device
        if name == "ort-fp16-tensorrt-ep":
            if device != "cuda" or "TensorrtExecutionProvider" not in available:
                notes[name] = "onnxruntime's TensorRT provider is not available (needs TensorRT's libnvinfer)"
                continue
            dev = "tensorrt"
        opts = dict(opts)
        if device != "cuda":
            opts.pop("cuda_options", None)
            if opts.pop("cuda_graph", False):
                opts["static_shapes"] = True  # same one-session-per-batch plumbing, without graphs
        t0 = time.perf_counter()
        try:
            # device "cuda" / "tensorrt" is strict: a provider that does not start raises (no quiet fallback)
            sess = OrtSession(paths[art], device=dev, device_id=device_id, **opts)
        except (ProviderUnavailable, RuntimeError, ValueError) as e:
            notes[name] = str(e).splitlines()[0][:300]
            continue
        expected = {"cuda": CUDA, "tensorrt": TENSORRT, "cpu": CPU}[dev]
        if sess.provider != expected:  # belt and braces: the row must say what ran
            notes[name] = f"onnxruntime started {sess.provider}, not {expected}: no row"
            continue
        if dev == "tensorrt":
            built = _tensorrt_ep_built(sess, paths[art], trt_cache)
            if built is not None:
                notes[name] = built
                continue
        prepare = device_prepare(sess) if inp == "device" else host_prepare(sess)
        out.append(Backend(name, "onnxruntime", inp, f32(sess), prepare, _noop, thr,
                           setup_s=time.perf_counter() - t0,
                           info={"provider": sess.provider, "providers": list(sess.providers),
                                 "io_binding": sess.io_binding, "cuda_graph": sess.cuda_graph,
                                 "file": paths[art].name}))
    return out


def _tensorrt_ep_built(sess: Any, path: Path, cache: Path | None) -> str | None:
    """``None`` when onnxruntime's TensorRT provider really built (or loaded) an engine for ``path``: after one
    run, its engine cache (``cache``, the suite's own folder) holds a ``*.engine`` file. Else the note saying
    why there is no TensorRT row: the provider took no node and CUDA ran everything."""
    x = np.zeros([1, *[int(d) for d in sess.input_shape[1:]]], dtype=sess.input_dtype)
    try:
        sess.run(x)
    except Exception as e:  # noqa: BLE001 - the note carries it
        return f"TensorRT provider failed on its first run: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    folder = Path(cache) if cache is not None else None
    engines = sorted(folder.glob("*.engine")) if folder is not None and folder.is_dir() else []
    if not engines:
        return (f"onnxruntime's TensorRT provider built no engine for {path.name} (none in {folder}): "
                "CUDA ran every node, so there is no TensorRT row")
    return None


def _tensorrt_backend(plan: Path, md: Any, device: Any, notes: dict[str, str]) -> list[Backend]:
    """``model.plan`` through the runtime's TensorRTRunner: host path for parity, torch buffers for speed."""
    import torch

    from tki_sdk.runtime.engine.tensorrt_runner import TensorRTRunner

    try:
        runner = TensorRTRunner(plan, md.input_name, md.output_name)
    except (ImportError, RuntimeError) as e:
        notes["tensorrt-plan"] = str(e).splitlines()[0][:300]
        return []
    tdt = {np.dtype(np.float16): torch.float16, np.dtype(np.float32): torch.float32}

    def prepare(x: np.ndarray) -> Callable[[], Any]:
        xd = torch.from_numpy(np.ascontiguousarray(x)).to(device=device, dtype=tdt[runner.input_dtype])
        ctx = runner.context
        if not ctx.set_input_shape(runner.input_name, tuple(xd.shape)):
            raise ValueError(f"batch {xd.shape[0]} outside the plan's profile (max {runner.max_batch})")
        out = torch.empty(tuple(ctx.get_tensor_shape(runner.output_name)), dtype=tdt[runner.output_dtype], device=device)
        ctx.set_tensor_address(runner.input_name, xd.data_ptr())
        ctx.set_tensor_address(runner.output_name, out.data_ptr())
        stream = torch.cuda.current_stream(device)

        def step() -> Any:
            if not ctx.execute_async_v3(stream.cuda_stream):
                raise RuntimeError(f"TensorRT execute_async_v3 failed on {plan.name} (batch {xd.shape[0]})")
            return out
        step.keep = (xd, out)  # type: ignore[attr-defined]
        return step

    return [Backend("tensorrt-plan", "tensorrt", "device", lambda x: runner.run(x), prepare,
                    lambda: torch.cuda.synchronize(device), FP16_THRESHOLD, max_batch=runner.max_batch,
                    info={"file": plan.name, "max_batch": runner.max_batch,
                          "provider": f"TensorRT {runner.version}"})]


def count_flops(model: Any, x1: np.ndarray) -> float | None:
    """FLOPs of ``model.encode_image`` on one image (``torch.utils.flop_counter``, on the CPU).

    The input requires grad so that ``nn.MultiheadAttention`` takes its composite path (projections and
    attention as separate, counted ops) rather than the fused inference kernel the counter cannot see, and
    attention runs as plain matmuls. A matmul ``[m,k] x [k,n]`` counts ``2mkn``.
    """
    try:
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        x = torch.from_numpy(np.ascontiguousarray(x1[:1], dtype=np.float32)).requires_grad_(True)
        with contextlib.ExitStack() as stack:
            try:  # attention as plain matmuls: the counter has no formula for the CPU flash kernel
                from torch.nn.attention import SDPBackend, sdpa_kernel

                stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
            except ImportError:  # pragma: no cover - older torch
                pass
            fc = stack.enter_context(FlopCounterMode(display=False))
            stack.enter_context(torch.enable_grad())
            model.encode_image(x)
        return float(fc.get_total_flops()) or None
    except Exception:  # noqa: BLE001 - informational only
        return None


