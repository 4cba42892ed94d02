"""``tki-bench gpu``: GPU parity and throughput of every inference path, PyTorch baselines included.

Backends (each skipped with its reason when its package, artifact or provider is missing):

==========================  ======  =====================================================================
name                        input   what runs
==========================  ======  =====================================================================
``torch-fp32``              device  ``TKIModel.encode_image`` eager, float32 (TF32 off): the reference path
``torch-fp16``              device  visual encoder in float16 (head and normalisation in float32), eager
``torch-fp16-compile``      device  the same under ``torch.compile(mode=--compile-mode)``
``torch-fp16-cudagraph``    device  the same eager model captured in one ``torch.cuda.CUDAGraph`` per batch
``ort-fp32-cuda``           device  ``model.onnx`` on onnxruntime's CUDA provider (TF32 off), I/O binding
``ort-fp16-cuda-host``      host    ``model.fp16.onnx``, plain ``session.run`` on numpy arrays (copies in/out)
``ort-fp16-cuda-iobind``    device  ``model.fp16.onnx`` with I/O binding, input and output stay on the GPU
``ort-fp16-cuda-graph``     device  ``model.fp16.onnx`` with I/O binding and a CUDA graph per batch size
``ort-fp16-tensorrt-ep``    device  ``model.onnx`` on onnxruntime's TensorRT provider (fp16, engine cache)
``tensorrt-plan``           device  ``model.plan`` through the runtime's ``TensorRTRunner`` engine
==========================  ======  =====================================================================

The backends live in :mod:`tki_sdk.benchmarks.gpu_backends`; the ORT paths run through
:class:`tki_sdk.runtime.engine.ort_session.OrtSession`, the session the runtime uses.

Parity: every backend embeds the same inputs, PACS images (``--dataset-dir``) through the model's exact
preprocessing plus standard-normal tensors, at batch 1 and 32, and is compared with ``TKIModel.encode_image``
in float64 by the export validator (:func:`tki_sdk.export.validate.validate_runner`): min / mean cosine, max
abs error; thresholds fp32 0.99999, every fp16 / TensorRT path 0.999.

Throughput, per backend and batch size (``--batch-sizes``, default 1, 32, 256) on preprocessed PACS tensors
already on the GPU (the ``host`` row includes its copies): ``--warmup`` calls, then synchronised calls for
half of ``--seconds`` (latency p50 / p95 / p99 per batch), then back-to-back calls for the other half with
one synchronisation at the end (``images_per_s``). Achieved TFLOP/s uses the model's FLOPs per image counted
with ``torch.utils.flop_counter``.

End to end from JPEG files (separately): ``Embedder(model_dir, precision="fp16")`` on the CUDA provider over
``--e2e-images`` PACS JPEGs (repeated when fewer) with ``--e2e-workers`` decode threads; next to it the
decode + preprocess rate alone (same threads) and the inference rate alone (host arrays, same batch), so the
slower of the two is named as the limit.

Targets (ARCHITECTURE.md, "Targets"): the best exported path >= 20,000 img/s at batch 256 on one H100 and ahead of the best
torch path; parity >= 0.999 for fp16 / TensorRT.

Presets (``--preset``): ``full`` (default) is every backend above and the end-to-end run; ``budget`` is
``torch-fp32``, ``torch-fp16`` and ``torch-fp16-cudagraph`` from ``--checkpoint`` alone (no export folder, no
onnxruntime-gpu), 1 s per row, no end to end: sized for one call of a lent GPU machine
(benchmarks/gpu/README.md). A run of torch backends only never needs ``--model-dir``; without one the exported
backends are listed as skipped. Beside the float64 parity, ``parity_vs_torch_fp32`` compares every fp16 path
with ``torch-fp32`` on the same rows (min / mean cosine, max abs error).

Every throughput row and parity entry records ``provider``, what actually ran it (``torch:cuda:0 (<GPU>)``,
``CUDAExecutionProvider``, ``TensorRT <version>``): onnxruntime sessions are created strictly (a provider that
does not start raises and the row is skipped with that line), and the TensorRT provider's row exists only when
its engine cache holds an engine after the first run.

Without CUDA (``torch.cuda.is_available()`` false) the suite prints one line and writes nothing, unless
``--device cpu`` or ``--dry-run`` asks for the CPU rehearsal: the same steps, the CUDA-only rows (CUDA graphs,
``torch.compile``, TensorRT) skipped with their reason, the ONNX rows on the CPU provider, and ``--dry-run``
with the shortest timings. The numbers of a rehearsal mean nothing.
"""
from __future__ import annotations

import copy
import gc
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from tki_sdk.benchmarks.datasets import dataset_dir
from tki_sdk.benchmarks.gpu_backends import (
    ALL_BACKENDS,
    PARITY_BATCH,
    Backend,
    _noop,
    _ort_backends,
    _tensorrt_backend,
    _torch_backends,
    count_flops,
    measure,
)
from tki_sdk.benchmarks.options import SuiteOptions
from tki_sdk.benchmarks.results import markdown_table
from tki_sdk.common.cpu import usable_cpus
from tki_sdk.common.errors import UsageError
from tki_sdk.common.imagefolders import IMAGE_SUFFIXES, list_images
from tki_sdk.common.model_metadata import ModelMetadata

__all__ = [
    "Backend",
    "measure",
    
    "run",
    "summarize",
    "end_to_end",
    "pick_files",
    "count_flops",
    "TARGET_IMG_S",
    "DEFAULT_BATCHES",
]

SUITE = "gpu"
DEFAULT_BATCHES = (1, 32, 256)
TARGET_IMG_S = 20_000.0
TARGET_BATCH = 256
#: The JPEG members of ``IMAGE_SUFFIXES`` (the end-to-end run measures JPEG decoding, draft mode included).
JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")
#: Nominal dense fp16 tensor-core peaks (FLOP/s), by a substring of the device name (first match wins).
FP16_PEAKS = (("H200", 989e12), ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12),
              ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12))


# ------------------------------------------------------------------------------------------------ data
#: Status lines of a long run (shown by the console scripts like progress; library code never prints).
_status = logging.getLogger("tki_sdk.progress.bench_gpu")


def pick_files(root: Path, n: int, exts: Sequence[str] | None = None) -> list[Path]:
    """``n`` image files spread evenly over the sorted file list of ``root`` (all domains and classes);
    deterministic. Fewer when the folder holds fewer. ``exts``: suffixes to take (default
    :data:`tki_sdk.common.imagefolders.IMAGE_SUFFIXES`, what a gallery indexes); hidden files are skipped."""

    want = frozenset(e.lower() for e in exts) if exts is not None else IMAGE_SUFFIXES
    files = sorted(f.path for f in list_images(root) if f.path.suffix.lower() in want)
    if not files or n <= 0:
        return []
    if n >= len(files):
        return files
    return [files[(i * len(files)) // n] for i in range(n)]


def _repeat_to(x: np.ndarray, n: int) -> np.ndarray:
    reps = -(-n // x.shape[0])
    return np.ascontiguousarray(np.concatenate([x] * reps)[:n])


# ------------------------------------------------------------------------------------------------ end to end
def end_to_end(emb: Any, files: Sequence[Path], *, batch_size: int, workers: int, seconds: float = 1.0,
               label: str = "jpeg") -> dict[str, Any]:
    """``emb.embed_images`` over ``files``: img/s end to end, next to decode + preprocess alone (``workers``
    threads, no model) and inference alone (``emb.embed_pixels`` on a host batch of ``batch_size``); the
    slower of the two stages is reported as ``limit``."""
    files = list(files)
    emb.embed_images(files[: min(len(files), batch_size)], batch_size=batch_size, workers=workers)  # warm-up
    res = emb.embed_images(files, batch_size=batch_size, workers=workers)
    wall = float(res.stats["wall_s"])
    n_ok = len(res)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        decoded = list(pool.map(lambda f: emb.preprocessor.process(f), files))
    decode_s = time.perf_counter() - t0
    xb = _repeat_to(np.stack(decoded[: min(len(decoded), batch_size)]), batch_size)
    inf = measure(lambda: emb.embed_pixels(xb), _noop, batch_size, seconds=seconds, warmup=2)
    decode_rate = len(files) / decode_s
    infer_rate = inf["images_per_s"]
    e2e = n_ok / wall if wall > 0 else float("nan")
    limit = "decode + preprocess" if decode_rate < infer_rate else "inference"
    return {
        "label": label, "files": len(files), "embedded": n_ok, "errors": len(res.errors), "batch_size": batch_size,
        "workers": workers, "provider": getattr(emb, "provider", None), "precision": getattr(emb, "precision", None),
        "images_per_s": e2e, "decode_images_per_s": decode_rate, "inference_images_per_s": infer_rate,
        "limit": limit, "fraction_of_limit": e2e / min(decode_rate, infer_rate),
        "wall_s": wall, "stats": dict(res.stats),
    }


# ------------------------------------------------------------------------------------------------ summary
def _peak(name: str | None) -> float | None:
    for key, v in FP16_PEAKS:
        if name and key in name:
            return v
    return None


def summarize(records: Sequence[dict[str, Any]], parity: dict[str, dict[str, Any]], *,
              target_batch: int = TARGET_BATCH, target: float = TARGET_IMG_S) -> dict[str, Any]:
    """Best exported path (onnxruntime / TensorRT, parity passed) and best torch path at ``target_batch``;
    whether the exported one reaches ``target`` img/s and beats torch."""
    at = [r for r in records if int(r["batch_size"]) == int(target_batch)]

    def best(kinds: tuple[str, ...]) -> dict[str, Any] | None:
        ok = [r for r in at if r["kind"] in kinds and parity.get(r["backend"], {}).get("pass", True)]
        return max(ok, key=lambda r: r["images_per_s"]) if ok else None

    be, bt = best(("onnxruntime", "tensorrt")), best(("torch",))
    return {
        "batch_size": int(target_batch),
        "target_images_per_s": target,
        "best_exported": be and {"backend": be["backend"], "images_per_s": be["images_per_s"]},
        "best_torch": bt and {"backend": bt["backend"], "images_per_s": bt["images_per_s"]},
        "meets_target": bool(be and be["images_per_s"] >= target),
        "exported_ahead_of_torch": bool(be and bt and be["images_per_s"] > bt["images_per_s"]),
        "speedup_vs_best_torch": (be["images_per_s"] / bt["images_per_s"]) if be and bt else None,
        "parity_all_pass": all(p.get("pass", False) for p in parity.values()) if parity else None,
    }


def _markdown(parity: dict[str, dict[str, Any]], records: list[dict[str, Any]], e2e: list[dict[str, Any]],
              summary: dict[str, Any], skipped: dict[str, str], gpu_name: str,
              vs_fp32: dict[str, dict[str, Any]] | None = None) -> str:
    parts = [f"GPU: {gpu_name}"]
    if parity:
        rows = [[k, v.get("min_cosine"), v.get("mean_cosine"), v.get("max_abs_error"), v.get("threshold"),
                 "pass" if v.get("pass") else f"FAIL{': ' + v['error'] if v.get('error') else ''}"]
                for k, v in parity.items()]
        parts.append("Parity vs TKIModel.encode_image (float64), PACS images + random tensors, batch 1 and 32\n\n"
                     + markdown_table(["backend", "min cos", "mean cos", "max abs err", "threshold", "result"], rows,
                                      digits=6))
    if vs_fp32:
        rows = [[k, v["min_cosine"], v["mean_cosine"], v["max_abs_error"]] for k, v in vs_fp32.items()]
        parts.append("Against torch-fp32 on the same inputs\n\n" + markdown_table(
            ["backend", "min cos", "mean cos", "max abs err"], rows, digits=6))
    if records:
        rows = [[r["backend"], r.get("provider"), r["input"], r["batch_size"], r["images_per_s"], r["p50_ms"],
                 r["p95_ms"], r["p99_ms"], r.get("tflops")] for r in records]
        parts.append("Throughput on preprocessed tensors\n\n" + markdown_table(
            ["backend", "ran on", "input", "batch", "img/s", "p50 ms", "p95 ms", "p99 ms", "TFLOP/s"], rows))
    if e2e:
        rows = [[r["label"], r["precision"], r["batch_size"], r["workers"], r["images_per_s"], r["decode_images_per_s"],
                 r["inference_images_per_s"], r["limit"]] for r in e2e]
        parts.append("End to end from JPEG files (Embedder)\n\n" + markdown_table(
            ["run", "precision", "batch", "decode threads", "img/s", "decode-only img/s", "inference-only img/s",
             "limit"], rows))
    be, bt = summary.get("best_exported"), summary.get("best_torch")
    line = f"batch {summary.get('batch_size')}: "
    line += f"best exported {be['backend']} {be['images_per_s']:,.0f} img/s" if be else "no exported path measured"
    line += f"; best torch {bt['backend']} {bt['images_per_s']:,.0f} img/s" if bt else ""
    line += (f"; target {summary['target_images_per_s']:,.0f} img/s "
             f"{'met' if summary.get('meets_target') else 'NOT met'}")
    parts.append(line)
    if skipped:
        by_reason: dict[str, list[str]] = {}
        for k, v in skipped.items():
            by_reason.setdefault(v, []).append(k)
        parts.append("Skipped: " + "; ".join(f"{', '.join(ks)} ({v})" for v, ks in by_reason.items()))
    return "\n\n".join(parts)


# ------------------------------------------------------------------------------------------------ presets
#: ``--preset budget``: the torch paths of the fused model straight from a checkpoint (no export, no
#: onnxruntime-gpu), sized to fit one call of a lent GPU machine with its install (benchmarks/gpu/README.md).
BUDGET_BACKENDS = ("torch-fp32", "torch-fp16", "torch-fp16-cudagraph")
TORCH_BACKENDS = tuple(b for b in ALL_BACKENDS if b.startswith("torch-"))
PRESETS: dict[str, dict[str, Any]] = {
    "full": {"backends": ALL_BACKENDS, "seconds": 2.0, "warmup": 10, "parity_images": 64, "e2e": True},
    "budget": {"backends": BUDGET_BACKENDS, "seconds": 1.0, "warmup": 5, "parity_images": 64, "e2e": False},
}
#: ``--dry-run`` / ``--quick`` timings (the CPU rehearsal of a preset: every step but the GPU itself).
QUICK = {"seconds": 0.4, "warmup": 3, "parity_images": 32, "e2e_images": 512}
DRY_RUN = {"seconds": 0.1, "warmup": 1, "parity_images": 32, "e2e_images": 64}


# ------------------------------------------------------------------------------------------------ CLI


def _cuda_or_skip(device: str = "cuda") -> Any:

    try:
        import torch
    except ImportError:
        raise UsageError("tki-bench gpu: skipped: torch is not installed (pip install 'tki-sdk[bench]')") from None
    if device == "cpu":
        return torch
    if not torch.cuda.is_available():
        raise UsageError("tki-bench gpu: skipped: no CUDA device (torch.cuda.is_available() is False); "
                         "run it on a machine with an NVIDIA GPU (see benchmarks/gpu/README.md)")
    return torch


def _device(torch: Any, device_id: int, kind: str = "cuda") -> Any:
    return torch.device("cuda", int(device_id)) if kind == "cuda" else torch.device("cpu")


def _settings(args: SuiteOptions) -> dict[str, Any]:
    """The run's settings: the preset's, then ``--quick`` / ``--dry-run`` timings, then explicit options."""

    preset = PRESETS[getattr(args, "preset", None) or "full"]
    dry = bool(getattr(args, "dry_run", False))
    quick = bool(getattr(args, "quick", False))
    short = DRY_RUN if dry else QUICK if quick else {}
    st = {
        "preset": getattr(args, "preset", None) or "full",
        "device": "cpu" if dry else (getattr(args, "device", None) or "cuda"),
        "dry_run": dry,
        "seconds": args.seconds if args.seconds is not None else short.get("seconds", preset["seconds"]),
        "warmup": args.warmup if args.warmup is not None else short.get("warmup", preset["warmup"]),
        "parity_images": args.parity_images or short.get("parity_images", preset["parity_images"]),
        "e2e_images": args.e2e_images or short.get("e2e_images", 4096),
        "e2e": preset["e2e"] and not args.no_e2e,
        "batches": _ints(args.batch_sizes, "--batch-sizes"),
    }
    wanted = ([b.strip() for b in str(args.backends).split(",") if b.strip()] if args.backends
              else list(preset["backends"]))
    unknown = sorted(set(wanted) - set(ALL_BACKENDS))
    if unknown:
        raise UsageError(f"gpu: unknown backend(s) {unknown}; choose from {', '.join(ALL_BACKENDS)}")
    st["backends"] = wanted
    st["exported"] = [b for b in wanted if b not in TORCH_BACKENDS]
    if args.model_dir is None:
        if args.backends and st["exported"]:
            raise UsageError(f"gpu: {', '.join(st['exported'])} run exported artifacts; pass --model-dir "
                             "(a tki-export folder) or choose torch backends only")
        if args.checkpoint is None:
            raise UsageError("gpu: pass --checkpoint (a tki train folder) for the torch paths, and --model-dir "
                             "(a tki-export folder) for the exported ones")
    return st


class _CheckpointInfo:
    """What the suite reads from ``tki.json``, taken from the model itself when there is no export folder."""

    def __init__(self, model: Any) -> None:
        self.model_name = model.clip.model_name
        self.head = "tki" if model.head is not None else "none"
        self.embedding_dim = int(model.embedding_dim)
        self.weights = dict(model.clip.weights or {})
        self.preprocess = dict(model.clip.preprocess_cfg)
        self.artifacts: dict[str, Any] = {}


def _reference(model: Any, x: np.ndarray, device: Any, batch: int = 32) -> np.ndarray:
    """``model.encode_image`` in float64 on ``device`` (the parity reference; the GPU computes it in seconds
    where the CPU takes minutes for a ViT-B): a float64 copy of the model, TF32 irrelevant in float64."""

    import torch

    ref = copy.deepcopy(model).double().to(device).eval()
    out = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            xi = torch.from_numpy(np.ascontiguousarray(x[i:i + batch], dtype=np.float64)).to(device)
            out.append(ref.encode_image(xi).cpu().numpy())
    del ref
    return np.concatenate(out, axis=0)


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def parity_vs(base: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> dict[str, float]:
    """Row cosines of ``other`` against ``base`` over every input group (the fp16 rows against torch-fp32)."""
    cos = np.concatenate([_cosine_rows(base[k], other[k]) for k in base])
    err = max(float(np.abs(np.asarray(base[k], np.float64) - np.asarray(other[k], np.float64)).max()) for k in base)
    return {"min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()), "max_abs_error": err, "rows": int(cos.size)}


def _load_model(md: Any, checkpoint: Path | None, pretrained: str | None) -> Any:
    from tki_sdk.export.fused import load_model


    w = md.weights or {}
    if pretrained is None and w.get("source") in ("file", "tag"):
        pretrained = w.get("ref")
    if md.head == "tki":
        ck = checkpoint or (Path(md.checkpoint["path"]) if md.checkpoint and md.checkpoint.get("path") else None)
        if ck is None or not Path(ck).is_dir():
            raise UsageError(f"gpu: the torch paths need the checkpoint of {md.model_name}; pass --checkpoint")
        return load_model(ck, head="tki", pretrained=pretrained)
    return load_model(None, head="none", model_name=md.model_name, pretrained=pretrained)


def _ints(text: str, what: str) -> list[int]:

    try:
        vals = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"gpu: {what} must be comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise UsageError(f"gpu: {what} must be positive integers, got {text!r}")
    return vals


def run(args: SuiteOptions) -> dict[str, Any]:
    """Run the GPU suite (see module docstring); one line and no result file without CUDA (``--device cpu`` /
    ``--dry-run`` run the same steps on the CPU, for rehearsal)."""
    torch = _cuda_or_skip("cpu" if getattr(args, "dry_run", False) else getattr(args, "device", "cuda"))
    st = _settings(args)
    import onnxruntime  # noqa: F401 - after torch (CUDA libraries), before anything that may load usearch

    from tki_sdk.benchmarks.plots import plot_latency, plot_throughput
    from tki_sdk.export.validate import ValidationInputs, validate_runner
    from tki_sdk.runtime.engine.preprocess import Preprocessor

    quick = bool(getattr(args, "quick", False))
    seconds, warmup, n_par, n_e2e = st["seconds"], st["warmup"], st["parity_images"], st["e2e_images"]
    batches = st["batches"]
    wanted = set(st["backends"])
    data = dataset_dir(args.dataset_dir)
    if data is None:
        raise UsageError("gpu: parity needs PACS images; pass --dataset-dir <root>/<domain>/<class>/<image> "
                         "or set TKI_PACS_DIR")
    progress = not getattr(args, "no_progress", False)

    def say(msg: str) -> None:
        if progress:
            _status.info(f"[gpu] {msg}")

    device = _device(torch, args.device_id, st["device"])
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        props = torch.cuda.get_device_properties(device)
        gpu = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
               "multiprocessors": props.multi_processor_count, "capability": f"{props.major}.{props.minor}",
               "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    else:
        gpu = {"name": "none (CPU rehearsal: the numbers mean nothing)", "torch_cuda": torch.version.cuda}

    # ---------------------------------------------------------------- model, inputs, reference
    notes: dict[str, str] = {}
    if args.model_dir is not None:
        md: Any = ModelMetadata.load(args.model_dir)
        model_dir: Path | None = Path(args.model_dir)
        say(f"loading {md.model_name} ({md.head}) and {n_par} PACS images from {data}")
        model = _load_model(md, args.checkpoint, args.pretrained)
        pre = Preprocessor.from_metadata(md)
    else:
        from tki_sdk.export.fused import load_model

        say(f"loading the checkpoint {args.checkpoint} (no export folder: torch paths only)")
        model = load_model(args.checkpoint, head="tki", pretrained=args.pretrained)
        md = _CheckpointInfo(model)
        model_dir = None
        pre = Preprocessor.from_metadata(md.preprocess)
        for name in st["exported"]:
            notes[name] = "no export folder (--model-dir): exported paths not measured"
    par_files = pick_files(data, n_par)
    if not par_files:
        raise UsageError(f"gpu: no images under {data}")
    x_img = pre.batch(par_files)
    # whole chunks of PARITY_BATCH rows: the compiled / graphed paths then see only batch 1 and 32
    n_keep = max(PARITY_BATCH, (x_img.shape[0] // PARITY_BATCH) * PARITY_BATCH)
    x_img = _repeat_to(x_img, n_keep)
    say(f"float64 reference on {device}")
    rnd = np.random.default_rng(0).standard_normal((PARITY_BATCH, *x_img.shape[1:])).astype(np.float32)
    groups = {"images": np.ascontiguousarray(x_img, dtype=np.float32), "random": rnd}
    inputs = ValidationInputs(groups, {k: _reference(model, v, device) for k, v in groups.items()},
                              (1, PARITY_BATCH), {"images": f"PACS ({len(par_files)} files from {data})",
                                                  "random": "standard normal, seed 0"})
    flops = count_flops(model, x_img[:1])
    if flops is None:
        say("FLOP count unavailable")

    # ---------------------------------------------------------------- backends
    backends: list[Backend] = []
    t0 = time.perf_counter()
    backends += _torch_backends(model, wanted, device, args.compile_mode, notes)
    if model_dir is not None and st["exported"]:
        arts = {k: model_dir / str(v.get("file")) for k, v in (md.artifacts or {}).items() if v.get("file")}
        onnx_paths = {k: p for k, p in arts.items() if k in ("fp32", "fp16") and p.is_file()}
        trt_cache = Path(os.environ.get("TKI_TRT_CACHE", "/tmp/tki-ort-trt-cache"))
        say("starting onnxruntime sessions")
        backends += _ort_backends(onnx_paths, wanted, device.type, batches, notes, trt_cache=trt_cache,
                                  device_id=args.device_id)
        if "tensorrt-plan" in wanted:
            plan = next((p for k, p in arts.items() if k.startswith("tensorrt") and p.is_file()), None)
            if device.type != "cuda":
                notes["tensorrt-plan"] = "needs a CUDA device"
            elif plan is None:
                notes["tensorrt-plan"] = "no TensorRT plan in the export (tki-export --tensorrt)"
            else:
                backends += _tensorrt_backend(plan, md, device, notes)
    setup_s = time.perf_counter() - t0

    # ---------------------------------------------------------------- parity
    parity: dict[str, dict[str, Any]] = {}
    outputs: dict[str, dict[str, np.ndarray]] = {}
    for b in backends:
        say(f"parity {b.name}")
        res = validate_runner(b.name, b.info.get("file", b.kind), b.host_run, inputs, threshold=b.threshold,
                              max_batch=b.max_batch)
        parity[b.name] = {**res.to_dict(), "provider": b.info.get("provider")}
        if b.name == "torch-fp32" or b.threshold < 0.99999:
            try:
                outputs[b.name] = {k: np.concatenate([np.asarray(b.host_run(v[i:i + PARITY_BATCH]), np.float32)
                                                      for i in range(0, v.shape[0], PARITY_BATCH)])
                                   for k, v in inputs.groups.items()}
            except Exception as e:  # noqa: BLE001 - the float64 parity above already records the failure
                notes[f"{b.name} vs torch-fp32"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    vs_fp32 = ({k: parity_vs(outputs["torch-fp32"], v) for k, v in outputs.items() if k != "torch-fp32"}
               if "torch-fp32" in outputs else {})

    # ---------------------------------------------------------------- throughput
    peak = _peak(gpu["name"]) if device.type == "cuda" else None
    records: list[dict[str, Any]] = []
    pool = _repeat_to(inputs.groups["images"], max(batches))
    for bs in batches:
        x = np.ascontiguousarray(pool[:bs])
        for b in backends:
            if b.max_batch is not None and bs > b.max_batch:
                notes[f"{b.name}@{bs}"] = f"batch {bs} above the plan's max batch {b.max_batch}"
                continue
            say(f"throughput {b.name} batch {bs}")
            try:
                step = b.prepare(x)
                t = measure(step, b.sync, bs, seconds=seconds, warmup=warmup)
            except Exception as e:  # noqa: BLE001 - one failing path must not stop the others
                notes[f"{b.name}@{bs}"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                continue
            finally:
                gc.collect()
            rec = {"backend": b.name, "kind": b.kind, "provider": b.info.get("provider"), "input": b.input,
                   "batch_size": bs, **t}
            if flops:
                rec["tflops"] = rec["images_per_s"] * flops / 1e12
                if peak:
                    rec["fraction_of_fp16_peak"] = rec["images_per_s"] * flops / peak
            records.append(rec)

    # ---------------------------------------------------------------- end to end
    e2e: list[dict[str, Any]] = []
    if st["e2e"] and model_dir is not None:
        if "fp16" not in (md.artifacts or {}):
            notes["e2e"] = "no fp16 artifact"
        else:
            from tki_sdk.runtime import Embedder

            jpgs = pick_files(data, n_e2e, exts=JPEG_SUFFIXES)
            if not jpgs:
                notes["e2e"] = f"no JPEG files under {data}"
            else:
                files = [jpgs[i % len(jpgs)] for i in range(n_e2e)]
                workers = args.e2e_workers or usable_cpus()
                ep = ["CUDAExecutionProvider"] if device.type == "cuda" else ["CPUExecutionProvider"]
                for label, opts in (("jpeg", {}), ("jpeg, draft decode", {"draft": True})):
                    say(f"end to end ({label}), {len(files)} files, {workers} decode threads")
                    try:
                        emb = Embedder(model_dir, precision="fp16", preprocess=opts, providers=ep)
                        e2e.append(end_to_end(emb, files, batch_size=args.e2e_batch_size, workers=workers,
                                              seconds=seconds, label=label))
                        del emb
                    except Exception as e:  # noqa: BLE001
                        notes[f"e2e {label}"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    elif st["e2e"]:
        notes["e2e"] = "no export folder (--model-dir)"

    summary = summarize(records, parity, target_batch=TARGET_BATCH if TARGET_BATCH in batches else max(batches))
    default_stem = ("dry-run" if st["dry_run"] else "quick" if quick else "results")
    stem = getattr(args, "name", None) or (f"{st['preset']}-{default_stem}" if st["preset"] != "full" else default_stem)
    plots: list[str] = []
    if records:
        suite_dir = Path(getattr(args, "suite_dir", Path(args.out_dir) / SUITE))
        plots.append(str(plot_throughput(records, suite_dir / f"{stem}_throughput.png",
                                         title=f"{md.model_name} on {gpu['name']}: img/s vs batch")))
        plots.append(str(plot_latency(records, suite_dir / f"{stem}_latency.png",
                                      title=f"{md.model_name} on {gpu['name']}: latency per batch")))
    try:
        import onnxruntime as ort

        ort_info = {"version": ort.__version__, "providers": ort.get_available_providers(), "file": ort.__file__}
    except ImportError:  # pragma: no cover
        ort_info = None
    return {
        "name": stem,
        "gpu": gpu,
        "onnxruntime": ort_info,
        "model": {"model_name": md.model_name, "head": md.head, "embedding_dim": md.embedding_dim,
                  "image_size": [int(v) for v in x_img.shape[2:]], "weights": md.weights, "flops_per_image": flops,
                  "export_dir": str(model_dir) if model_dir is not None else None,
                  "checkpoint": str(args.checkpoint) if args.checkpoint is not None else None},
        "settings": {"preset": st["preset"], "device": str(device), "dry_run": st["dry_run"],
                     "backends": st["backends"], "batch_sizes": batches, "seconds": seconds, "warmup": warmup,
                     "compile_mode": args.compile_mode, "parity_images": int(x_img.shape[0]),
                     "parity_random": PARITY_BATCH, "dataset": str(data), "fp16_peak_flops": peak,
                     "setup_s": setup_s},
        "parity": parity,
        "parity_vs_torch_fp32": vs_fp32,
        "throughput": records,
        "e2e": e2e,
        "summary": summary,
        "skipped": notes,
        "backend_info": {b.name: {**b.info, "setup_s": b.setup_s} for b in backends},
        "markdown": _markdown(parity, records, e2e, summary, notes, gpu["name"], vs_fp32),
        "plots": plots,
    }
