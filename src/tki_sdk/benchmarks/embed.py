"""``tki-bench embed``: end to end from image files through the torch-free runtime, against its parts.

For an export folder and a set of image files (default: a seeded PACS sample), in one process:

- **decode + preprocess**: ``Preprocessor.process`` on every file, one thread (images/s per thread);
- **inference**: ``Embedder.embed_pixels`` on the already preprocessed tensors, in batches (the model's rate);
- **end to end**: ``Embedder.embed_images`` on the file paths (decode pool overlapped with inference).

Reported: images/s of each, the end-to-end rate as a fraction of the inference rate (target >= 0.8: decoding
hidden behind inference), and which part limits. With ``--quick`` and no ``--model-dir`` a tiny model is
trained and exported first.

``--engine ray`` measures the two ``tki embed`` engines instead, in one run on the same files and cores
(:func:`run_engines`): the whole run (list, plan, embed with checkpoints, commit to a gallery) with one
process and with Ray Data (a local Ray with ``--ray-cpus`` CPUs, started before the clock; the pipeline's
own start -- actors loading the model -- is inside it), interleaved in ``--repeats`` pairs so that a change
of the machine's load weighs on both, their img/s ratio (medians over the pairs; target: Ray >= 85% of one
process), the time to re-run the finished run (target: < 5% of the original run), whether both galleries
hold the same vectors, the per-image cost of decode, preprocess and inference (one thread for the first two;
``--threads`` for inference, batch ``--batch-size``), and the load average around each phase (the machine
may be shared).
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from tki_sdk.benchmarks.datasets import DomainDataset, dataset_dir
from tki_sdk.benchmarks.results import markdown_table
from tki_sdk.common.errors import UsageError
from tki_sdk.benchmarks.options import SuiteOptions

E2E_TARGET = 0.8
RAY_TARGET = 0.85
RESUME_TARGET = 0.05


def run(args: SuiteOptions) -> dict[str, Any]:
    if getattr(args, "engine", "local") == "ray":
        return run_engines(args)

    from tki_sdk.benchmarks.parity import model_dir_or_quick_export
    from tki_sdk.benchmarks.plots import plot_grouped_bars
    from tki_sdk.runtime import Embedder

    model_dir, tmp = model_dir_or_quick_export(args, "embed")
    n = args.images or (64 if args.quick else 1000)
    data = DomainDataset(dataset_dir(args.dataset_dir, required_by="embed"))
    rng = np.random.default_rng(args.seed)
    records = data.records()
    paths = [records[i].path for i in sorted(rng.choice(len(records), size=min(n, len(records)), replace=False))]
    try:
        emb = Embedder(model_dir, precision=args.precision, threads=args.threads)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None

    t0 = time.perf_counter()
    pixels = np.stack([emb.preprocessor.process(p) for p in paths])
    decode_s = time.perf_counter() - t0

    emb.embed_pixels(pixels[: args.batch_size])  # warm-up
    t0 = time.perf_counter()
    for s in range(0, len(paths), args.batch_size):
        emb.embed_pixels(pixels[s : s + args.batch_size])
    infer_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    res = emb.embed_images([str(p) for p in paths], batch_size=args.batch_size, workers=args.workers)
    e2e_s = time.perf_counter() - t0
    if tmp is not None:
        tmp.cleanup()
    if res.errors:
        raise UsageError(f"{len(res.errors)} file(s) failed to embed, first: {res.errors[0]}")
    ref = emb.embed_pixels(pixels)
    same = float(np.abs(res.embeddings - ref).max())

    n_img = len(paths)
    rates = {"decode+preprocess (1 thread)": n_img / decode_s, "inference (tensors)": n_img / infer_s,
             "end to end (files)": n_img / e2e_s}
    fraction = rates["end to end (files)"] / rates["inference (tensors)"]
    limit = "inference" if rates["inference (tensors)"] <= rates["decode+preprocess (1 thread)"] * (args.workers or 2) \
        else "decode + preprocess"
    md = markdown_table(["stage", "images/s"], [[k, f"{v:.1f}"] for k, v in rates.items()])
    md += (f"\n\nend to end = {fraction:.0%} of the inference rate (target >= {E2E_TARGET:.0%}: "
           f"{'met' if fraction >= E2E_TARGET else 'NOT met'}); limited by {limit}; "
           f"{emb.metadata.model_name} {emb.precision} on {emb.backend} ({emb.provider}), {args.threads} threads, {n_img} files")
    stem = getattr(args, "name", None) or ("quick" if args.quick else "results")
    png = plot_grouped_bars(list(rates), {"images/s": list(rates.values())}, args.suite_dir / f"{stem}.png",
                            ylabel="images / s", title=f"{emb.metadata.model_name} {emb.precision}: files to embeddings")
    return {
        "model_dir": str(model_dir), "model_name": emb.metadata.model_name, "precision": emb.precision,
        "engine": emb.backend, "engine_choice": emb.engine_choice.to_dict() if emb.engine_choice else None,
        "provider": emb.provider, "threads": args.threads, "batch_size": args.batch_size, "images": n_img,
        "rates": rates, "e2e_fraction_of_inference": fraction, "target": E2E_TARGET,
        "target_met": fraction >= E2E_TARGET, "limited_by": limit, "embed_images_stats": res.stats,
        "max_abs_diff_e2e_vs_tensors": same, "markdown": md, "plots": [str(png)],
    }


# ---------------------------------------------------------------------------------------------- engines
def _sample_paths(args: SuiteOptions, n: int) -> list[Path]:


    data = DomainDataset(dataset_dir(args.dataset_dir, required_by="tki-bench embed"))
    records = data.records()
    rng = np.random.default_rng(args.seed)
    return [records[i].path for i in sorted(rng.choice(len(records), size=min(n, len(records)), replace=False))]


def stage_costs(emb: Any, paths: list[Path], batch_size: int) -> dict[str, float]:
    """Seconds per image of decode (``Preprocessor.load``), preprocess (``Preprocessor.__call__``), both on
    one thread, and inference (``embed_pixels`` in batches of ``batch_size`` on the embedder's threads)."""

    pre = emb.preprocessor
    dec = prep = 0.0
    pixels = []
    for p in paths:
        t0 = time.perf_counter()
        img = pre.load(str(p))
        t1 = time.perf_counter()
        pixels.append(pre(img))
        t2 = time.perf_counter()
        dec += t1 - t0
        prep += t2 - t1
    x = np.stack(pixels)
    emb.embed_pixels(x[:batch_size])  # warm-up
    t0 = time.perf_counter()
    for s in range(0, len(x), batch_size):
        emb.embed_pixels(x[s : s + batch_size])
    inf = time.perf_counter() - t0
    n = len(paths)
    return {"decode_s": dec / n, "preprocess_s": prep / n, "inference_s": inf / n}


def run_engines(args: SuiteOptions) -> dict[str, Any]:
    """``--engine ray``: one-process and Ray Data ``tki embed`` runs on the same files, plus a resume."""


    from tki_sdk.benchmarks.parity import model_dir_or_quick_export
    from tki_sdk.benchmarks.plots import plot_grouped_bars
    from tki_sdk.runtime import Embedder, Gallery
    from tki_sdk.runtime.pipeline.distributed import (
        RayOptions,
        embed_ray,
        import_ray,
        local_ray,
        plan_resources,
    )
    from tki_sdk.runtime.pipeline.embed_run import EmbedJob, embed_local, run_job
    from tki_sdk.runtime.pipeline.ingest import gallery_options
    from tki_sdk.runtime.pipeline.shards import ShardInfo

    import_ray()
    model_dir, tmp_model = model_dir_or_quick_export(args, "embed")
    n = args.images or (64 if args.quick else 2000)
    paths = _sample_paths(args, n)
    try:
        emb = Embedder(model_dir, precision=args.precision, threads=args.threads)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None
    opts = gallery_options(emb)
    info = ShardInfo(model_fingerprint=emb.model_fingerprint, embedding_dim=emb.embedding_dim,
                     metric=opts["metric"], model=opts["model_info"])
    work = tempfile.TemporaryDirectory(prefix="tki-bench-embed-")
    root = Path(work.name)
    images = root / "images"
    for p in paths:  # the sampled files under <domain>/<class>/<file>, as symbolic links
        link = images / p.parent.parent.name / p.parent.name / p.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(p.resolve())
    load: dict[str, list[float]] = {"start": list(os.getloadavg())}

    costs = stage_costs(emb, paths[: min(200, len(paths))], args.batch_size)
    load["after_stage_costs"] = list(os.getloadavg())

    def job(out: str) -> EmbedJob:
        return EmbedJob(images=images, out=root / out, every=1000, seconds=60.0, target_recall=0.0)

    def local(todo: Any, ck: Any) -> int:
        return embed_local(todo, emb, ck, batch_size=args.batch_size, workers=args.workers)

    # one process and Ray interleaved, in pairs, on fresh galleries: a machine whose load changes (shared with
    # other work) weighs on both alike; the ratio is of the medians, the pairs' ratios are recorded too
    t0 = time.perf_counter()
    with local_ray(args.ray_cpus) as ray:
        ray_init_s = time.perf_counter() - t0
        ray_cpus = ray.cluster_resources().get("CPU")
        nodes = [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]
        ray_opts = RayOptions(model_dir=str(model_dir), precision=emb.precision, actors=args.actors,
                              cpus_per_actor=args.cpus_per_actor, threads=args.threads, batch_size=args.batch_size,
                              decode=args.ray_decode)
        planned, notes = plan_resources(nodes, ray_opts)
        reps_local, reps_ray = [], []
        for i in range(max(1, args.repeats)):
            load[f"before_local_{i}"] = list(os.getloadavg())
            reps_local.append(run_job(job(f"local-{i}.gallery"), info, local, lambda: Gallery(**opts)))
            load[f"before_ray_{i}"] = list(os.getloadavg())
            reps_ray.append(run_job(job(f"ray-{i}.gallery"), info, lambda todo, ck: embed_ray(todo, ck, ray_opts),
                                    lambda: Gallery(**opts)))
    load["after_ray"] = list(os.getloadavg())
    rep_local = reps_local[0]

    rep_resume = run_job(job("local-0.gallery"), info, local, lambda: Gallery(**opts))
    load["after_resume"] = list(os.getloadavg())

    ga, gb = Gallery.load(root / "local-0.gallery"), Gallery.load(root / "ray-0.gallery")
    ka, kb = np.sort(ga.keys()), np.sort(gb.keys())
    same_keys = bool(np.array_equal(ka, kb))
    min_cos = float(np.min(np.sum(ga.get_vectors(ka) * gb.get_vectors(kb), axis=1))) if same_keys else None
    work.cleanup()
    if tmp_model is not None:
        tmp_model.cleanup()

    local_runs = [r.embedded / r.embed_s for r in reps_local]
    ray_runs = [r.embedded / r.embed_s for r in reps_ray]
    local_ips, ray_ips = float(np.median(local_runs)), float(np.median(ray_runs))
    ratio = ray_ips / local_ips
    pair_ratios = [b / a for a, b in zip(local_runs, ray_runs)]
    resume_frac = rep_resume.wall_s / rep_local.wall_s
    per_image = {k: v * 1e3 for k, v in costs.items()}
    rows = []
    for i, (a, b) in enumerate(zip(reps_local, reps_ray)):
        rows.append([f"{i + 1}. one process (embed stage)", f"{local_runs[i]:.1f}", f"{a.embed_s:.1f}", f"{a.wall_s:.1f}",
                     f"{load[f'before_local_{i}'][0]:.2f}"])
        rows.append([f"{i + 1}. Ray Data (embed stage)", f"{ray_runs[i]:.1f}", f"{b.embed_s:.1f}", f"{b.wall_s:.1f}",
                     f"{load[f'before_ray_{i}'][0]:.2f}"])
    rows.append(["resume of the finished run", "-", "-", f"{rep_resume.wall_s:.2f}", f"{load['after_ray'][0]:.2f}"])
    md = markdown_table(["run", "images/s", "embed s", "whole run s", "load avg 1 min before"], rows)
    md += (f"\n\nRay = {ratio:.0%} of one process, medians of {len(pair_ratios)} interleaved pair(s) (pairs: "
           f"{', '.join(f'{r:.0%}' for r in pair_ratios)}; target >= {RAY_TARGET:.0%}: "
           f"{'met' if ratio >= RAY_TARGET else 'NOT met'}); resume = {resume_frac:.1%} of the run "
           f"(target < {RESUME_TARGET:.0%}: {'met' if resume_frac < RESUME_TARGET else 'NOT met'}); "
           f"per image: decode {per_image['decode_s']:.2f} ms, preprocess {per_image['preprocess_s']:.2f} ms "
           f"(1 thread), inference {per_image['inference_s']:.2f} ms ({args.threads} threads); "
           f"{emb.metadata.model_name} {emb.precision}, {len(paths)} files, Ray start {ray_init_s:.1f} s (not counted), "
           f"decode in the {planned.decode}{' (' + '; '.join(notes) + ')' if notes else ''}"
           + (f"; {args.note}" if args.note else ""))
    stem = getattr(args, "name", None) or ("quick-ray" if args.quick else "engines")
    png = plot_grouped_bars(["one process", "Ray Data"], {"images/s": [local_ips, ray_ips]},
                            args.suite_dir / f"{stem}.png", ylabel="images / s",
                            title=f"tki embed, {emb.metadata.model_name} {emb.precision}, {len(paths)} files: "
                                  f"Ray {ratio:.0%} of one process")
    return {
        "engine": "ray", "model_dir": str(model_dir), "model_name": emb.metadata.model_name,
        "weights": emb.metadata.weights, "precision": emb.precision, "provider": emb.provider,
        "threads": args.threads, "batch_size": args.batch_size, "images": len(paths),
        "ray": {"cpus": ray_cpus, "actors": planned.actors, "cpus_per_actor": args.cpus_per_actor,
                "actor_threads": ray_opts.actor_threads, "init_s": ray_init_s, "decode": planned.decode,
                "decode_requested": args.ray_decode, "adapted": notes},
        "images_per_s": {"one_process": local_ips, "ray": ray_ips},
        "images_per_s_runs": {"one_process": local_runs, "ray": ray_runs}, "pair_ratios": pair_ratios,
        "ray_fraction_of_one_process": ratio, "note": args.note,
        "ray_target": RAY_TARGET, "ray_target_met": ratio >= RAY_TARGET,
        "resume_s": rep_resume.wall_s, "resume_fraction_of_run": resume_frac, "resume_target": RESUME_TARGET,
        "resume_target_met": resume_frac < RESUME_TARGET,
        "runs": {"one_process": [asdict(r) for r in reps_local], "ray": [asdict(r) for r in reps_ray],
                 "resume": asdict(rep_resume)},
        "per_image_ms": per_image, "same_keys": same_keys, "min_cosine_ray_vs_one_process": min_cos,
        "load_average_1_5_15": load, "markdown": md, "plots": [str(png)],
    }
