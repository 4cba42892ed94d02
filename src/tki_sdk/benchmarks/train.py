"""``tki-bench train``: seconds per training step, stage 1 (truncated vs full text context) and stage 2.

Stage 1 runs the text transformer on P×C + P prompts per step with gradients to ν; the truncated context
(the shortest that holds the longest prompt) is the SDK's default, the full 77-token context is what a
plain ``encode_text`` would run. Target (ARCHITECTURE.md, "Targets"): ViT-B-32, P=20, C=7, ≤ 3 s per step on 2 CPU cores.
"""
from __future__ import annotations

import statistics
import time
from typing import Any

from tki_sdk.benchmarks.results import markdown_table
from tki_sdk.common.progress import progress_bar
from tki_sdk.benchmarks.options import SuiteOptions

STAGE1_TARGET_S = 3.0


def _stage1_step_seconds(bank, class_feats, opt, full: bool, steps: int, progress: bool = True) -> list[float]:
    from tki_sdk.train.losses import expansion_loss

    times = []
    desc = f"stage 1, {'full' if full else 'truncated'} context"
    bar = progress_bar(steps + 1, desc, unit="step", enabled=bool(progress), leave=False)
    for _ in range(steps + 1):  # the first step warms up
        bar.update(1)
        t0 = time.perf_counter()
        loss, _, _ = expansion_loss(bank.prompt_features(full_context=full), class_feats,
                                    bank.domain_features(full_context=full))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    bar.close()
    return times[1:]


def run(args: SuiteOptions) -> dict[str, Any]:

    import torch

    from tki_sdk.benchmarks.plots import plot_grouped_bars
    from tki_sdk.train.clip import load_clip
    from tki_sdk.train.head import HeadConfig, HyperbolicMLP
    from tki_sdk.train.losses import aggregation_loss
    from tki_sdk.train.prompts import PromptBank

    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.steps or (2 if args.quick else 5)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    clip = load_clip(args.model, args.pretrained, device=args.device)
    bank = PromptBank(clip, classes, args.prompts, generator=torch.Generator().manual_seed(0)).to(args.device)
    with torch.no_grad():
        class_feats = bank.class_features()
    opt = torch.optim.Adam([bank.domain_vectors], lr=0.005)
    progress = not getattr(args, "no_progress", False)
    truncated = _stage1_step_seconds(bank, class_feats, opt, False, steps, progress)
    full = _stage1_step_seconds(bank, class_feats, opt, True, max(1, steps // 2), progress)

    with torch.no_grad():
        feats = bank.prompt_features()
    head = HyperbolicMLP(HeadConfig(in_dim=clip.embed_dim)).to(args.device)
    hopt = torch.optim.Adam(head.parameters(), lr=0.005)
    agg_times = []
    for _ in range(21 if args.quick else 101):
        t0 = time.perf_counter()
        loss = aggregation_loss(head(feats))
        hopt.zero_grad(set_to_none=True)
        loss.backward()
        hopt.step()
        agg_times.append(time.perf_counter() - t0)
    agg_times = agg_times[1:]

    t_trunc, t_full = statistics.median(truncated), statistics.median(full)
    t_agg = statistics.median(agg_times)
    rows = [
        ["stage 1, truncated context", bank.short_length, f"{t_trunc:.3f}", "1.00x"],
        ["stage 1, full context", bank.tower.context_length, f"{t_full:.3f}", f"{t_full / t_trunc:.2f}x"],
        ["stage 2 (head, L_agg)", "-", f"{t_agg:.4f}", "-"],
    ]
    md = markdown_table(["step", "text tokens", "s/step (median)", "vs truncated"], rows)
    weights = clip.weights
    stem = getattr(args, "name", None) or ("quick" if args.quick else "results")
    png = plot_grouped_bars(
        ["stage 1, truncated", "stage 1, full context", "stage 2"],
        {"s/step (median)": [t_trunc, t_full, t_agg]},
        args.suite_dir / f"{stem}.png", ylabel="seconds per step",
        title=f"{args.model}, P={args.prompts}, C={len(classes)}, {torch.get_num_threads()} threads",
    )
    return {
        "model": args.model,
        "weights": weights,
        "prompts": args.prompts,
        "classes": len(classes),
        "threads": torch.get_num_threads(),
        "device": str(args.device),
        "stage1_truncated_s": truncated,
        "stage1_full_s": full,
        "stage2_s": agg_times,
        "stage1_truncated_median_s": t_trunc,
        "stage1_full_median_s": t_full,
        "stage2_median_s": t_agg,
        "speedup_truncated_vs_full": t_full / t_trunc,
        "target_stage1_s": STAGE1_TARGET_S,
        "target_met": t_trunc <= STAGE1_TARGET_S,
        "plots": [str(png)],
        "markdown": md + f"\n\nstage-1 target <= {STAGE1_TARGET_S} s/step: "
        f"{'met' if t_trunc <= STAGE1_TARGET_S else 'NOT met'} ({t_trunc:.2f} s)",
    }
