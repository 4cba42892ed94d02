"""Throughput suite: every CPU engine x precision of one export against torch eager and a plain onnxruntime
session, measured interleaved in one process, with each path's fraction of the CPU's peak and what
``Embedder(backend="auto")`` picks here.

What it measures (``tki-bench throughput``):

* Model: ``--model`` (default ViT-B-32, random CLIP weights) with a TKI head (``HyperbolicMLP``, default
  sizes, seeded random init) so the full ``TKIModel.encode_image`` runs; or the model of an existing export
  (``--model-dir``, rebuilt from the checkpoint its ``tki.json`` records); ``--head none`` for vanilla CLIP.
* Rows, all with ``--threads`` intra-op threads (torch via ``torch.set_num_threads``):

  - ``torch``: eager fp32 ``TKIModel.encode_image`` under ``inference_mode``;
  - ``ort-plain-fp32``: ``onnxruntime.InferenceSession(model.onnx)`` with only ``intra_op_num_threads`` set,
    what Immich-style deployments run (the baseline of the CPU target);
  - ``<engine>:<artifact>``: the SDK path, ``Embedder(model_dir, backend=engine, precision=artifact)
    .embed_pixels``, for every artifact of the export on every engine installed that it passed parity on
    (``onnxruntime:fp32``, ``onnxruntime:fp16``, ``onnxruntime:int8``, ``openvino:fp32``,
    ``openvino:openvino_int8``);
  - ``plain-<engine>:<artifact>``: a plain session of the artifact ``auto`` picked, same threads
    (onnxruntime ``InferenceSession``; OpenVINO ``compile_model`` with only ``INFERENCE_NUM_THREADS``): what
    the Embedder costs over it.
* Interleaving: at each batch size, rounds of one call per row in turn (after one warm-up call each), so load
  changes on a shared machine hit every row alike. img/s = batch / median call time; p50/p95/p99 latency;
  img/s ratios to torch and to ``ort-plain-fp32`` from the same rounds.
* Fraction of peak: ``GFLOP/image x img/s / peak``; GFLOP per image counted from ``model.onnx``
  (:mod:`.flops`), peak from :func:`tki_sdk.common.cpu.peak_estimate` (int8 peak for int8 rows, fp32 peak
  otherwise; method recorded).
* Engine choice: :func:`tki_sdk.runtime.engine.engine_choice.choose_engine` measured afresh (no cache) and reported
  with its reason.
* Texts (exports with a text artifact): texts/s of ``Embedder.embed_texts`` at batch 1 and 64 for the raw
  query and the export's default construction (the TKI ensemble runs P prompts per text), beside torch eager
  ``TKIModel.encode_text`` on the same raw strings, interleaved (:func:`text_throughput`).
* Profiles: onnxruntime's per-node profile of the fp32 and int8 artifacts: share of kernel time per operator
  type, and the head (``expmap0``, Möbius layers, normalisation) over the encoder.

Targets (ARCHITECTURE.md, "Targets"; ``TARGETS``): the auto choice >= 2.5x ``ort-plain-fp32`` and >= 3x torch with
parity >= 0.99, within 10% of the fastest row, the Embedder >= 0.97x a plain session of the same artifact, the
best int8 row >= 50% of the int8 peak, the head <= 1% of encoder time. ``loadavg`` is recorded before and
after (the ratios come from one interleaved run).
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tki_sdk.benchmarks.results import markdown_table
from tki_sdk.common.artifacts import ONNXRUNTIME, TENSORRT, artifact_kind
from tki_sdk.common.cpu import cpu_info
from tki_sdk.common.errors import UsageError
from tki_sdk.common.model_metadata import ModelMetadata
from tki_sdk.export.validate import measure_interleaved
from tki_sdk.benchmarks.options import SuiteOptions

__all__ = ["run", "TARGETS", "measure_interleaved", "head_share_from_profile", "text_throughput"]

TARGETS = {"auto_vs_plain_fp32": 2.5, "auto_vs_torch": 3.0, "auto_of_fastest": 0.9, "embedder_vs_plain": 0.97,
           "int8_fraction_of_peak": 0.5, "head_fraction": 0.01}
PLAIN_FP32 = "ort-plain-fp32"


def _bench_error(msg: str) -> Exception:

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


def head_share_from_profile(onnx_path: Path, x: np.ndarray, threads: int, runs: int = 3) -> dict[str, Any]:
    """From onnxruntime's per-node profile of ``onnx_path`` on ``x``: kernel time of the head (the ONNX tail
    nodes) over the rest of the graph, and ``op_share``: each operator type's share of all kernel time."""
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
    by_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        node = e["name"][: -len("_kernel_time")]
        op = str((e.get("args") or {}).get("op_name", "?"))
        by_op[op] = by_op.get(op, 0.0) + e["dur"]
        if node in tail:
            head += e["dur"]
            matched += 1
        else:
            enc += e["dur"]
    total = sum(by_op.values()) or 1.0
    op_share = {k: round(v / total, 4) for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])}
    n = runs + 1
    if not tail or not matched:
        return {"head_fraction": float("nan"), "head_ms": float("nan"), "encoder_ms": enc / 1000 / n,
                "op_share": op_share}
    return {"head_fraction": head / enc, "head_ms": head / 1000 / n, "encoder_ms": enc / 1000 / n,
            "tail_nodes": len(tail), "op_share": op_share}


def _build_model(args: SuiteOptions) -> tuple[Any, Path | None]:
    """(TKIModel, export folder or None). With ``--model-dir``: the model its ``tki.json`` records (from the
    checkpoint; vanilla CLIP for head "none"; this suite's seeded random head when there is no checkpoint)."""
    import torch

    from tki_sdk.export.fused import load_model
    from tki_sdk.train.head import HeadConfig, HyperbolicMLP
    from tki_sdk.train.model import TKIModel

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


def _sdk_rows(md: Any, export_dir: Path, engines: dict[str, str]) -> list[tuple[str, str, str, float | None]]:
    """``(label, engine, artifact, parity min cosine)`` of every artifact x engine this export passed parity on
    (an artifact without a parity record is measured too, with parity ``None``)."""

    rows = []
    for key, art in (md.artifacts or {}).items():
        try:
            own = str(art.get("runtime") or artifact_kind(key).runtime)
        except KeyError:
            own = ONNXRUNTIME
        if own == TENSORRT or not (export_dir / str(art.get("file", ""))).is_file():
            continue
        pairs = [(own, art.get("parity_min_cosine"), art.get("parity_pass", True))]
        pairs += [(str(e), r.get("parity_min_cosine"), r.get("parity_pass")) for e, r in (art.get("engines") or {}).items()
                  if isinstance(r, dict) and e != own]
        for eng, cos, ok in pairs:
            if eng in engines and ok is not False:
                rows.append((f"{eng}:{key}", eng, key, cos))
    return rows


def _plain_runner(engine: str, path: Path, threads: int, ort: Any) -> Callable[[np.ndarray], Any]:
    """A plain session of ``path`` with only the thread count set (the reference for the Embedder's cost)."""
    if engine == "openvino":
        from tki_sdk.runtime.engine.openvino_runner import plain_openvino_request

        return plain_openvino_request(path, threads)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return lambda x: s.run(None, {name: x})


def _precision_of(label: str, md: Any) -> str | None:
    """Numeric precision of a row (``int8`` rows are compared with the int8 peak)."""
    if label == "torch" or label == PLAIN_FP32:
        return "fp32"
    key = label.split(":", 1)[-1]
    return str((md.artifacts or {}).get(key, {}).get("precision") or ("int8" if "int8" in key else "fp32"))


def run(args: SuiteOptions) -> dict[str, Any]:
    """Run the suite (see module docstring); returns the JSON payload for ``tki-bench``."""
    import onnxruntime as ort
    import torch

    from tki_sdk.benchmarks.flops import graph_flops
    from tki_sdk.benchmarks.plots import plot_latency, plot_throughput
    from tki_sdk.runtime import Embedder
    from tki_sdk.runtime.engine.engine_choice import choose_engine, installed_engines

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
    cpu = cpu_info()
    peak = cpu.peak()

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
        fp32_file = export_dir / str((md.artifacts or {}).get("fp32", {}).get("file", "model.onnx"))
        flops = graph_flops(fp32_file)
        engines = installed_engines()
        sdk_rows = [r for r in _sdk_rows(md, export_dir, engines)
                    if r[2] in precisions or r[2] not in ("fp32", "fp16", "int8")]

        # the engine choice, measured afresh with the threads of every row
        choice = choose_engine(md, export_dir, args.threads, use_cache=False)
        auto_label = f"{choice.engine}:{choice.precision}" if choice.precision else f"onnxruntime:{md.default_precision}"

        plain = _plain_runner("onnxruntime", fp32_file, args.threads, ort)
        y = np.asarray(plain(xmax[:2])[0])
        with torch.inference_mode():
            ref = model.encode_image(torch.from_numpy(xmax[:2])).numpy()
        cos = float(((y * ref).sum(1) / (np.linalg.norm(y, axis=1) * np.linalg.norm(ref, axis=1))).min())
        if cos < 0.9999:  # the torch model and the ONNX files must compute the same thing
            raise _bench_error(f"{export_dir} does not match the torch model rebuilt for it (cosine {cos:.4f}); "
                               "pass the export of this model")
        runners: dict[str, Callable[[np.ndarray], Any]] = {PLAIN_FP32: plain}
        embedders: dict[str, Any] = {}
        for label, eng, key, _ in sdk_rows:
            e = Embedder(export_dir, backend=eng, precision=key, threads=args.threads)
            embedders[label] = e
            runners[label] = e.embed_pixels
        plain_auto = None
        if auto_label in embedders:
            plain_auto = f"plain-{auto_label}"
            runners[plain_auto] = _plain_runner(embedders[auto_label].backend, embedders[auto_label].model_path,
                                                args.threads, ort)

        prev_threads = torch.get_num_threads()
        torch.set_num_threads(args.threads)
        records: list[dict[str, Any]] = []
        parity = {label: cosv for label, _, _, cosv in sdk_rows}
        try:
            for b in batches:
                x = np.ascontiguousarray(xmax[:b])
                xt = torch.from_numpy(x)

                def torch_call(xt: Any = xt) -> Any:
                    with torch.inference_mode():
                        return model.encode_image(xt)

                fns: dict[str, Callable[[], Any]] = {"torch": torch_call}
                fns.update({k: (lambda run=run, x=x: run(x)) for k, run in runners.items()})
                r = rounds if b == args.batch_size else max(3, rounds // 3)
                times = measure_interleaved(fns, r)
                base = _stats(times["torch"], b)["images_per_s"]
                base_plain = _stats(times[PLAIN_FP32], b)["images_per_s"]
                for k, t in times.items():
                    st = _stats(t, b)
                    prec = _precision_of(k.removeprefix("plain-"), md)
                    pk = peak.int8_gops if prec == "int8" else peak.fp32_gflops
                    st.update({"backend": k, "precision": prec, "speedup_vs_torch": st["images_per_s"] / base,
                               "speedup_vs_plain_fp32": st["images_per_s"] / base_plain,
                               "gops": flops["gflop_per_image"] * st["images_per_s"],
                               "fraction_of_peak": (flops["gflop_per_image"] * st["images_per_s"] / pk) if pk else None,
                               "parity_min_cosine": parity.get(k.removeprefix("plain-")),
                               "auto": k == auto_label})
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
        profiles: dict[str, Any] = {}
        if not args.no_profile:
            for p in ("fp32", "int8"):
                art = (md.artifacts or {}).get(p)
                if art and p in precisions:
                    profiles[p] = head_share_from_profile(export_dir / art["file"],
                                                          np.ascontiguousarray(xmax[: args.batch_size]), args.threads)
        text = text_throughput(model, md, export_dir, args.threads, max(3, rounds // 2))
        variants = None
        if getattr(args, "int8_variants", False):
            variants = _int8_variants(model, md, fp32_file, args)
        load_after = _loadavg()

        main = {r["backend"]: r for r in records if r["batch_size"] == args.batch_size}
        targets: dict[str, dict[str, Any]] = {}

        def target(name: str, value: float | None, upper: bool = False, **extra: Any) -> None:
            if value is None or not np.isfinite(value):
                return
            goal = TARGETS[name]
            targets[name] = {"value": value, "target": goal, "met": value <= goal if upper else value >= goal, **extra}

        sdk_main = {k: v for k, v in main.items() if ":" in k and not k.startswith("plain-")}
        if auto_label in main:
            a = main[auto_label]
            target("auto_vs_plain_fp32", a["speedup_vs_plain_fp32"], row=auto_label)
            target("auto_vs_torch", a["speedup_vs_torch"], row=auto_label)
            fastest = max(sdk_main, key=lambda k: sdk_main[k]["images_per_s"])
            target("auto_of_fastest", a["images_per_s"] / sdk_main[fastest]["images_per_s"], fastest=fastest)
            if plain_auto in main:
                target("embedder_vs_plain", a["images_per_s"] / main[plain_auto]["images_per_s"], row=auto_label)
        int8_rows = {k: v for k, v in sdk_main.items() if v["precision"] == "int8"}
        if int8_rows:
            best8 = max(int8_rows, key=lambda k: int8_rows[k]["images_per_s"])
            target("int8_fraction_of_peak", int8_rows[best8]["fraction_of_peak"], row=best8)
        hf = profiles.get("fp32", {}).get("head_fraction") if profiles else head_torch.get("head_fraction")
        if hf is not None and model.head is not None:
            target("head_fraction", hf, upper=True,
                   measured_on="onnxruntime fp32 profile" if profiles else "torch eager")

        name = getattr(args, "name", None) or ("quick" if quick else
                                                 f"{md.model_name}_b{args.batch_size}_t{args.threads}")
        suite_dir = Path(args.suite_dir)
        plots = [
            str(plot_throughput(records, suite_dir / f"{name}_throughput.png",
                                title=f"{md.model_name} ({md.head} head), {cpu.model}, {args.threads} threads: img/s vs batch")),
            str(plot_latency([r for r in records if r["batch_size"] == args.batch_size],
                             suite_dir / f"{name}_latency.png",
                             title=f"{md.model_name} latency per call, batch {args.batch_size}, {args.threads} threads")),
        ]
        order = ["torch", PLAIN_FP32, *[r[0] for r in sdk_rows], *( [plain_auto] if plain_auto else [])]
        rows = [[r["backend"] + (" (auto)" if r["auto"] else ""), r["batch_size"], round(r["images_per_s"], 1),
                 f"{r['speedup_vs_torch']:.2f}x", f"{r['speedup_vs_plain_fp32']:.2f}x",
                 "-" if r["fraction_of_peak"] is None else f"{100 * r['fraction_of_peak']:.1f}% {r['precision'] if r['precision'] == 'int8' else 'fp32'}",
                 "-" if r["parity_min_cosine"] is None else f"{r['parity_min_cosine']:.5f}",
                 round(r["p50_ms"], 1), round(r["p95_ms"], 1)]
                for r in sorted(records, key=lambda r: (r["batch_size"], order.index(r["backend"])))]
        md_table = markdown_table(["engine:artifact", "batch", "img/s", "vs torch", "vs plain ORT fp32",
                                   "of peak", "parity", "p50 ms", "p95 ms"], rows)
        lines = [md_table, "", f"- CPU: {cpu.summary()} (peak: {peak.method})",
                 f"- {flops['gflop_per_image']:.4g} GFLOP per image ({flops['method']})",
                 f"- auto picked {auto_label}: {choice.reason}"]
        for k, t in targets.items():
            v = t["value"]
            fmt = (f"{100 * v:.3f}%" if k == "head_fraction" else f"{100 * v:.1f}%" if k == "int8_fraction_of_peak"
                   else f"{v:.2f}x")
            tgt = (f"<= {100 * t['target']:.0f}%" if k == "head_fraction" else
                   f">= {100 * t['target']:.0f}%" if k == "int8_fraction_of_peak" else f">= {t['target']}x")
            lines.append(f"- {k}: {fmt} (target {tgt}) {'met' if t['met'] else 'NOT met'}")
        int8 = (md.artifacts or {}).get("int8") or {}
        if int8:
            lines.append(f"- int8 scheme shipped: {int8.get('scheme')} ({int8.get('chosen_because', '')})")
        if variants:
            lines += ["", markdown_table(
                ["int8 variant (onnxruntime)", "min cosine", "img/s", "vs fp32", "top ops"],
                [[k, f"{v['min_cosine']:.5f}", round(v["images_per_s"], 1), f"{v['vs_fp32']:.2f}x",
                  ", ".join(f"{op} {100 * sh:.0f}%" for op, sh in list(v["op_share"].items())[:3])]
                 for k, v in variants["variants"].items()])]
        for r in (text or {}).get("records", []):
            lines.append(f"- text {r['backend']} batch {r['batch_size']}: {r['texts_per_s']:.1f} texts/s "
                         f"(p50 {r['p50_ms']:.1f} ms)")
        lines.append(f"- load average before/after: {load_before} / {load_after} on {os.cpu_count()} CPUs")
        return {
            "name": name,
            "model": {"model_name": md.model_name, "head": md.head, "weights": md.weights, "embedding_dim": md.embedding_dim,
                      "input": [3, h, w], "export_dir": str(export_dir) if args.keep_export or args.model_dir else None},
            "settings": {"batch_size": args.batch_size, "batches": batches, "threads": args.threads,
                         "rounds_main": rounds, "rounds_sweep": max(3, rounds // 3), "interleaved": True,
                         "input": "standard normal pixels (preprocessed tensors; no decode)",
                         "plain_fp32": "onnxruntime.InferenceSession(model.onnx), only intra_op_num_threads set"},
            "cpu": cpu.to_dict(),
            "flops": flops,
            "engines": engines,
            "engine_choice": choice.to_dict(),
            "auto": auto_label,
            "records": records,
            "targets": targets,
            "head_share": {"torch_eager": head_torch,
                           "onnxruntime_profile": {k: {kk: vv for kk, vv in v.items() if kk != "op_share"}
                                                   for k, v in profiles.items()}},
            "op_share": {k: v.get("op_share") for k, v in profiles.items()},
            "artifacts": {k: {kk: v.get(kk) for kk in ("file", "bytes", "scheme", "runtime", "parity_min_cosine",
                                                        "engines", "weights", "activations")}
                          for k, v in (md.artifacts or {}).items()},
            "int8_variants": variants,
            "text": text,
            "export_seconds": export_seconds,
            "loadavg": {"before": load_before, "after": load_after},
            "seconds_total": time.perf_counter() - t_start,
            "markdown": "\n".join(lines),
            "plots": plots,
        }
    finally:
        if tmp_ctx is not None:
            tmp_ctx.cleanup()


#: Batch sizes of the text rows.
TEXT_BATCHES = (1, 64)


def text_throughput(model: Any, md: Any, export_dir: Path, threads: int, rounds: int) -> dict[str, Any] | None:
    """texts/s of ``Embedder.embed_texts`` (raw query; the export's default construction) and of torch eager
    ``model.encode_text`` at :data:`TEXT_BATCHES`, interleaved; None when the export has no text artifact.
    Texts: the words of the PACS classes and styles in short phrases (tokenisation included in every row)."""
    import torch

    from tki_sdk.runtime import Embedder

    if not md.has_text:
        return None
    emb = Embedder(export_dir, backend="onnxruntime", precision="fp32", threads=threads)
    words = ["dog", "elephant", "giraffe", "guitar", "horse", "house", "person", "sketch", "cartoon", "painting"]
    phrases = [f"a {a} {b}" for a in words for b in words][:max(TEXT_BATCHES)]
    default = str(md.text.get("default_query") or "raw")
    records = []
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for b in TEXT_BATCHES:
            xs = phrases[:b]
            fns: dict[str, Callable[[], Any]] = {"torch:encode_text": lambda xs=xs: model.encode_text(xs)}
            fns["onnxruntime:text_fp32 raw"] = lambda xs=xs: emb.embed_texts(xs, template="raw")
            if default != "raw":
                fns[f"onnxruntime:text_fp32 {default}"] = lambda xs=xs: emb.embed_texts(xs)
            for k, t in measure_interleaved(fns, rounds).items():
                st = _stats(t, b)
                st["texts_per_s"] = st.pop("images_per_s")
                st["ms_per_text"] = st.pop("ms_per_image")
                records.append({"backend": k, **st})
    finally:
        torch.set_num_threads(prev)
    return {"records": records, "default_query": default, "threads": threads, "rounds": rounds,
            "texts": "two-word phrases of PACS class and style words ('a dog sketch'), tokenised in every call",
            "prompts_per_text": {"raw": 1, default: (int(md.text["domain_vectors"]["shape"][0])
                                                     if default == "ensemble" else 1)}}


def _int8_variants(model: Any, md: Any, fp32_file: Path, args: SuiteOptions) -> dict[str, Any]:
    """:func:`.int8_variants.run_variants` on 32 calibration and 16 validation images (the export's image source)."""
    from tki_sdk.benchmarks.int8_variants import run_variants
    from tki_sdk.export.calibration import default_image_source, load_images
    from tki_sdk.export.validate import generated_images

    folder, origin = default_image_source()
    pre = md.preprocess.to_dict()
    if folder is not None:
        px = load_images(folder, pre, count=48, seed=0).pixels
        source = f"{folder} ({origin})"
    else:
        px, source = generated_images(48, pre), "generated images"
    return run_variants(model, fp32_file, md.head, px[:32], px[32:], source, args.threads, args.batch_size,
                        max(3, (args.rounds or 20) // 2), lambda p, x, t: head_share_from_profile(p, x, t, runs=2))


def _export_model(model: Any, out: Path, precisions: tuple[str, ...], args: SuiteOptions) -> None:
    """Export an in-memory TKIModel (e.g. the random head) with :func:`tki_sdk.export.pipeline.run_export`;
    with the OpenVINO artifact when openvino and nncf are installed."""
    from tki_sdk.export.openvino_int8 import openvino_export_available
    from tki_sdk.export.pipeline import ExportConfig, run_export

    cfg = ExportConfig(out=out, precisions=precisions, head="tki" if model.head is not None else "none",
                       model_name=model.clip.model_name, threads=args.threads, time_torch=False,
                       progress=not getattr(args, "no_progress", False), timing_rounds=3,
                       calib_count=32 if getattr(args, "quick", False) else 64,
                       openvino=openvino_export_available())
    run_export(cfg, model=model)
