"""Throughput suite: torch eager vs the exported ONNX models on CPU, measured interleaved in one process.

What it measures (``tki-bench throughput``):

* Model: ``--model`` (default ViT-B-32, random CLIP weights) with a TKI head (``HyperbolicMLP``, default
  sizes, seeded random init) so the full ``TKIModel.encode_image`` runs; or the model of an existing export
  (``--model-dir``, rebuilt from the checkpoint its ``tki.json`` records); ``--head none`` for vanilla CLIP.
* Backends: ``torch`` (eager fp32 ``TKIModel.encode_image`` under ``inference_mode``), ``ort-fp32``,
  ``ort-fp16`` and ``ort-int8`` (the files ``tki-export`` wrote, onnxruntime CPU, ``ORT_ENABLE_ALL``), all with
  ``--threads`` intra-op threads (default 2; torch via ``torch.set_num_threads``).
* Interleaving: at each batch size, rounds of one call per backend in turn (after one warm-up call each), so
  load changes on a shared machine hit every backend alike. Per backend and batch: img/s = batch / median
  call time, p50/p95/p99 call latency, and the img/s ratio to torch in the same rounds.
* Head cost: the head (``expmap0``, Möbius layers, normalisation) vs the visual encoder, in torch eager
  (median ``head.embed`` time over the median ``visual`` time on the same batch) and in the deployed fp32 /
  int8 ONNX graphs (onnxruntime's per-node profile: kernel time of the tail nodes over the rest).

Targets (ARCHITECTURE.md, "Targets"): int8 >= 5x and fp32 ONNX >= 1.5x torch eager img/s at batch 16 with 2 threads; the head
<= 1% of encoder latency. The summary reports each with its measured value; ``machine.loadavg`` is recorded
before and after (the ratios come from one interleaved run, so a busy machine slows all backends, but torch's
OpenMP threads suffer more from a core taken by another process than onnxruntime's pool).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tki_sdk.export.validate import measure_interleaved

from .results import markdown_table

__all__ = ["add_arguments", "run", "TARGETS", "measure_interleaved", "head_share_from_profile"]

TARGETS = {"int8_speedup": 5.0, "fp32_speedup": 1.5, "head_fraction": 0.01}
BACKENDS = ("torch", "ort-fp32", "ort-fp16", "ort-int8")


def _int_list(s: str) -> list[int]:
    try:
        out = [int(float(x)) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1, got {s!r}")
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``tki-bench throughput``."""
    g = parser.add_argument_group("throughput")
    g.add_argument("--model", default="ViT-B-32", help="open_clip architecture, random weights (default ViT-B-32)")
    g.add_argument("--head", choices=["tki", "none"], default="tki",
                   help="tki: random-init hyperbolic head on top (default); none: vanilla CLIP")
    g.add_argument("--model-dir", type=Path, default=None,
                   help="an existing tki-export folder to measure (skips exporting; torch model from its tki.json)")
    g.add_argument("--batch-size", type=int, default=16, help="main batch size (default 16)")
    g.add_argument("--sweep", type=_int_list, default=None, help="extra batch sizes (default 1,8,32; --quick: none)")
    g.add_argument("--threads", type=int, default=2, help="intra-op threads for every backend (default 2)")
    g.add_argument("--rounds", type=int, default=None,
                   help="interleaved rounds at the main batch (default 20; --quick: 6); sweep sizes get a third")
    g.add_argument("--precisions", default="fp32,fp16,int8", help="ONNX precisions to export / measure")
    g.add_argument("--no-profile", action="store_true", help="skip the onnxruntime per-node profile (head share)")
    g.add_argument("--keep-export", action="store_true", help="keep the export in <out-dir>/throughput/export_<model>")


def _bench_error(msg: str) -> Exception:
    from tki_sdk.common.cli import UsageError

    return UsageError(msg)


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):  # pragma: no cover
        return None


def _stats(times: list[float], batch: int) -> dict[str, float]:
    t = np.asarray(times)
    med = float(np.median(t))
    return {
        "batch_size": batch, "images_per_s": batch / med, "median_ms": 1000 * med,
        "p50_ms": 1000 * float(np.percentile(t, 50)), "p95_ms": 1000 * float(np.percentile(t, 95)),
        "p99_ms": 1000 * float(np.percentile(t, 99)), "best_ms": 1000 * float(t.min()), "calls": int(t.size),
        "ms_per_image": 1000 * med / batch,
    }


def head_share_from_profile(onnx_path: Path, x: np.ndarray, threads: int, runs: int = 3) -> dict[str, float]:
    """Kernel time of the head (the ONNX tail nodes) over the rest of the graph, from onnxruntime's profiler."""
    import onnxruntime as ort

    from tki_sdk.export.onnx_export import load_proto, tail_nodes

    tail = set(tail_nodes(load_proto(onnx_path)))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        so.profile_file_prefix = str(Path(tmp) / "prof")
        s = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        name = s.get_inputs()[0].name
        s.run(None, {name: x})
        for _ in range(runs):
            s.run(None, {name: x})
        events = json.loads(Path(s.end_profiling()).read_text())
    head = enc = 0.0
    matched = 0
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        node = e["name"][: -len("_kernel_time")]
        if node in tail:
            head += e["dur"]
            matched += 1
        else:
            enc += e["dur"]
    if not tail or not matched:
        return {"head_fraction": float("nan"), "head_ms": float("nan"), "encoder_ms": enc / 1000 / (runs + 1)}
    n = runs + 1
    return {"head_fraction": head / enc, "head_ms": head / 1000 / n, "encoder_ms": enc / 1000 / n,
            "tail_nodes": len(tail)}


def _build_model(args: argparse.Namespace) -> tuple[Any, Path | None]:
    """(TKIModel, export folder or None). With ``--model-dir``: the model its ``tki.json`` records (from the
    checkpoint; vanilla CLIP for head "none"; this suite's seeded random head when there is no checkpoint)."""
    import torch

    from tki_sdk.export.fused import load_model
    from tki_sdk.head import HeadConfig, HyperbolicMLP
    from tki_sdk.model import TKIModel
    from tki_sdk.runtime.metadata import ModelMetadata

    export_dir = Path(args.model_dir) if args.model_dir is not None else None
    model_name, head, pretrained = args.model, args.head, None
    if export_dir is not None:
        md = ModelMetadata.load(export_dir)
        ck = (md.checkpoint or {}).get("path")
        w = md.weights or {}
        pretrained = w.get("ref") if w.get("source") in ("file", "tag") else None
        if md.head == "tki" and ck:
            return load_model(ck, head="tki", pretrained=pretrained), export_dir
        model_name, head = md.model_name, md.head
    vanilla = load_model(None, head="none", model_name=model_name, pretrained=pretrained)
    if head == "none":
        return vanilla, export_dir
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        mlp = HyperbolicMLP(HeadConfig(in_dim=vanilla.clip.embed_dim)).eval()
    for p in mlp.parameters():
        p.requires_grad_(False)
    return TKIModel(vanilla.clip, mlp).eval(), export_dir


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the suite (see module docstring); returns the JSON payload for ``tki-bench``."""
    import onnxruntime as ort
    import torch

    from tki_sdk.runtime.metadata import ModelMetadata

    from .plots import plot_latency, plot_throughput

    if args.threads < 1 or args.batch_size < 1:
        raise _bench_error("--threads and --batch-size must be >= 1")
    quick = bool(getattr(args, "quick", False))
    rounds = int(args.rounds or (6 if quick else 20))
    sweep = [] if (quick and args.sweep is None) else (args.sweep if args.sweep is not None else [1, 8, 32])
    batches = sorted({int(args.batch_size), *sweep})
    precisions = tuple(p.strip() for p in args.precisions.split(",") if p.strip())
    bad = [p for p in precisions if p not in ("fp32", "fp16", "int8")]
    if bad:
        raise _bench_error(f"unknown precision(s) {bad}; choose from fp32, fp16, int8")
    load_before = _loadavg()
    t_start = time.perf_counter()

    model, export_dir = _build_model(args)
    tmp_ctx = None
    export_seconds = None
    if export_dir is None:
        if args.keep_export:
            export_dir = Path(args.suite_dir) / f"export_{model.clip.model_name}_{'tki' if model.head else 'none'}"
        else:
            tmp_ctx = tempfile.TemporaryDirectory(prefix="tki-bench-throughput-")
            export_dir = Path(tmp_ctx.name)
        # the random head is not a checkpoint: export the in-memory model through the same pipeline steps
        t0 = time.perf_counter()
        _export_model(model, export_dir, precisions, args)
        export_seconds = time.perf_counter() - t0
    try:
        md = ModelMetadata.load(export_dir)
        h, w = md.preprocess.size
        rng = np.random.default_rng(0)
        xmax = rng.standard_normal((max(batches), 3, h, w)).astype(np.float32)

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        sessions = {}
        for p in precisions:
            art = (md.artifacts or {}).get(p)
            if art and str(art.get("file", "")).endswith(".onnx"):
                sessions[f"ort-{p}"] = ort.InferenceSession(str(export_dir / art["file"]), so,
                                                            providers=["CPUExecutionProvider"])
        if "ort-fp32" in sessions:  # the torch model and the ONNX files must compute the same thing
            s32 = sessions["ort-fp32"]
            y = s32.run(None, {s32.get_inputs()[0].name: xmax[:2]})[0]
            with torch.inference_mode():
                ref = model.encode_image(torch.from_numpy(xmax[:2])).numpy()
            cos = float(((y * ref).sum(1) / (np.linalg.norm(y, axis=1) * np.linalg.norm(ref, axis=1))).min())
            if cos < 0.9999:
                raise _bench_error(f"{export_dir} does not match the torch model rebuilt for it (cosine {cos:.4f}); "
                                   "pass the export of this model")
        prev_threads = torch.get_num_threads()
        torch.set_num_threads(args.threads)
        records: list[dict[str, Any]] = []
        try:
            for b in batches:
                x = np.ascontiguousarray(xmax[:b])
                xt = torch.from_numpy(x)

                def torch_call(xt: Any = xt) -> Any:
                    with torch.inference_mode():
                        return model.encode_image(xt)

                fns: dict[str, Callable[[], Any]] = {"torch": torch_call}
                for k, s in sessions.items():
                    name = s.get_inputs()[0].name
                    fns[k] = (lambda s=s, name=name, x=x: s.run(None, {name: x}))
                r = rounds if b == args.batch_size else max(3, rounds // 3)
                times = measure_interleaved(fns, r)
                base = _stats(times["torch"], b)["images_per_s"]
                for k, t in times.items():
                    st = _stats(t, b)
                    st["backend"] = k
                    st["speedup_vs_torch"] = st["images_per_s"] / base
                    records.append(st)
            # head vs encoder in torch eager, same batch, interleaved
            xb = torch.from_numpy(np.ascontiguousarray(xmax[: args.batch_size]))
            head_torch: dict[str, Any] = {"head": "none"}
            if model.head is not None:
                with torch.inference_mode():
                    feats = model.visual(xb)
                    t = measure_interleaved({"encoder": lambda: model.visual(xb),
                                             "head": lambda: model.head.embed(feats)}, max(3, rounds // 2))
                enc, hd = float(np.median(t["encoder"])), float(np.median(t["head"]))
                head_torch = {"encoder_ms": 1000 * enc, "head_ms": 1000 * hd, "head_fraction": hd / enc}
        finally:
            torch.set_num_threads(prev_threads)
        head_onnx: dict[str, Any] = {}
        if not args.no_profile and model.head is not None:
            for p in ("fp32", "int8"):
                art = (md.artifacts or {}).get(p)
                if art:
                    head_onnx[p] = head_share_from_profile(export_dir / art["file"],
                                                           np.ascontiguousarray(xmax[: args.batch_size]), args.threads)
        load_after = _loadavg()

        main = {r["backend"]: r for r in records if r["batch_size"] == args.batch_size}
        targets = {}
        if "ort-int8" in main:
            v = main["ort-int8"]["speedup_vs_torch"]
            targets["int8_speedup"] = {"value": v, "target": TARGETS["int8_speedup"], "met": v >= TARGETS["int8_speedup"]}
        if "ort-fp32" in main:
            v = main["ort-fp32"]["speedup_vs_torch"]
            targets["fp32_speedup"] = {"value": v, "target": TARGETS["fp32_speedup"], "met": v >= TARGETS["fp32_speedup"]}
        hf = head_onnx.get("fp32", {}).get("head_fraction") if head_onnx else head_torch.get("head_fraction")
        if hf is not None and np.isfinite(hf):
            targets["head_fraction"] = {"value": hf, "target": TARGETS["head_fraction"],
                                        "met": hf <= TARGETS["head_fraction"],
                                        "measured_on": "onnxruntime fp32 profile" if head_onnx else "torch eager"}

        name = getattr(args, "name", None) or ("quick" if quick else
                                                 f"{md.model_name}_b{args.batch_size}_t{args.threads}")
        suite_dir = Path(args.suite_dir)
        plots = [
            str(plot_throughput(records, suite_dir / f"{name}_throughput.png",
                                title=f"{md.model_name} ({md.head} head) CPU, {args.threads} threads: img/s vs batch")),
            str(plot_latency([r for r in records if r["batch_size"] == args.batch_size],
                             suite_dir / f"{name}_latency.png",
                             title=f"{md.model_name} latency per call, batch {args.batch_size}, {args.threads} threads")),
        ]
        rows = [[r["backend"], r["batch_size"], round(r["images_per_s"], 1), f"{r['speedup_vs_torch']:.2f}x",
                 round(r["p50_ms"], 1), round(r["p95_ms"], 1), round(r["p99_ms"], 1)]
                for r in sorted(records, key=lambda r: (r["batch_size"], BACKENDS.index(r["backend"])))]
        md_table = markdown_table(["backend", "batch", "img/s", "vs torch", "p50 ms", "p95 ms", "p99 ms"], rows)
        lines = [md_table, ""]
        for k, t in targets.items():
            fmt = f"{t['value']:.2f}x" if k.endswith("speedup") else f"{100 * t['value']:.3f}%"
            tgt = f">= {t['target']}x" if k.endswith("speedup") else f"<= {100 * t['target']:.0f}%"
            lines.append(f"- {k}: {fmt} (target {tgt}) {'met' if t['met'] else 'NOT met'}")
        int8 = (md.artifacts or {}).get("int8") or {}
        if int8:
            lines.append(f"- int8 scheme shipped: {int8.get('scheme')} ({int8.get('chosen_because', '')})")
        lines.append(f"- load average before/after: {load_before} / {load_after} on {os.cpu_count()} CPUs")
        return {
            "name": name,
            "model": {"model_name": md.model_name, "head": md.head, "weights": md.weights, "embedding_dim": md.embedding_dim,
                      "input": [3, h, w], "export_dir": str(export_dir) if args.keep_export or args.model_dir else None},
            "settings": {"batch_size": args.batch_size, "batches": batches, "threads": args.threads,
                         "rounds_main": rounds, "rounds_sweep": max(3, rounds // 3), "interleaved": True,
                         "input": "standard normal pixels (preprocessed tensors; no decode)"},
            "records": records,
            "targets": targets,
            "head_share": {"torch_eager": head_torch, "onnxruntime_profile": head_onnx},
            "artifacts": {k: {kk: v.get(kk) for kk in ("file", "bytes", "scheme", "parity_min_cosine")}
                          for k, v in (md.artifacts or {}).items()},
            "export_seconds": export_seconds,
            "loadavg": {"before": load_before, "after": load_after},
            "seconds_total": time.perf_counter() - t_start,
            "markdown": "\n".join(lines),
            "plots": plots,
        }
    finally:
        if tmp_ctx is not None:
            tmp_ctx.cleanup()


def _export_model(model: Any, out: Path, precisions: tuple[str, ...], args: argparse.Namespace) -> None:
    """Export an in-memory TKIModel (e.g. the random head) with :func:`tki_sdk.export.pipeline.run_export`."""
    from tki_sdk.export.pipeline import ExportConfig, run_export

    cfg = ExportConfig(out=out, precisions=precisions, head="tki" if model.head is not None else "none",
                       model_name=model.clip.model_name, threads=args.threads, time_torch=False,
                       progress=not getattr(args, "no_progress", False), timing_rounds=3,
                       calib_count=32 if getattr(args, "quick", False) else 64)
    run_export(cfg, model=model)
