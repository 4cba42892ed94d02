"""``tki-bench paper``: the paper's PACS tables and figures with one command, our numbers beside the paper's.

Protocol (section 5.1): queries from one domain, the gallery from each other domain, mAP@200 and Prec@200
(Prec@k divides by k, :mod:`.metrics`), whole-gallery mAP recorded too; Prec@1 for Table 7. The paper's
numbers come from ``paper_numbers.json`` (transcribed cell by cell from the paper's text; its tables head
their columns "mAP" and "Prec", compared here with mAP@200 and Prec@200, as the file's ``column_metrics``
records).

What runs, on the dataset given (PACS for Tables 3, 5, 6 and the figures; Table 7 is DomainNet in the
paper and is compared only when the dataset's domains are DomainNet's, otherwise ours is printed alone):

- one CLIP (``--model``, ``--pretrained FILE``; random init without it) embeds every image once; every run
  below applies its own head to these features, so the image encoder runs once per image;
- TKI runs (``tki train`` with the paper's settings, P = 20, each ablation switch once): the base run
  (both losses, true labels, hyperbolic head); Table 5: ``--losses max | min | none``; Table 6:
  ``--labels random``; Table 7: ``--geometry euclidean`` (fair-temperature rule ``matched``); Figure 5:
  ``--prompts`` for each P of ``--sweep``;
- Table 3 rows: vanilla CLIP, TKI by cosine (the default export), and TKI by inner product and Poincaré
  distance on the same raw ball points;
- Figure 3: t-SNE of the base run's P x C prompt features t_pi (colour = domain vector, marker = class);
- Figure 5: mAP@200 and Prec@200 (average over all pairs) against P. The paper gives this curve only as a
  figure, so no numbers sit beside ours.

The paper's "neither loss" row of Table 5 equals its vanilla CLIP baseline cell for cell; ours is a run
whose stage 1 was skipped (random domain vectors) and whose head was still trained.

Every table records its wall time (its own training runs plus scoring; the shared base run and the image
embedding are recorded apart). With random weights every number means nothing about the method: the suite
says so in the tables, the JSON and the plots.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from tki_sdk.benchmarks.accuracy import RANDOM_INIT, AccuracyTable, cross_domain_table, describe_weights
from tki_sdk.benchmarks.datasets import DomainDataset, dataset_dir
from tki_sdk.benchmarks.results import markdown_table

__all__ = ["add_arguments", "run", "paper_numbers", "PAPER_NUMBERS_FILE"]

PAPER_NUMBERS_FILE = "paper_numbers.json"
TABLES = ("3", "5", "6", "7")
FIGURES = ("3", "5")
QUICK = {"model": "TKI-Tiny-ViT", "per_class": 3, "steps_expand": 3, "steps_aggregate": 10, "prompts": 4,
         "sweep": "2,4"}
NO_MEANING = ("RANDOM WEIGHTS: CLIP was randomly initialised, so every number in this report means nothing about the "
              "method; the run only shows that the protocol works end to end.")


def paper_numbers() -> dict[str, Any]:
    """``paper_numbers.json``: the paper's cells (``table``, ``dataset``, ``method``, ``query``, ``gallery``,
    ``metric``, ``value`` in %, ``line`` of the paper's text) plus domain letters and notes."""
    return json.loads(resources.files("tki_sdk.benchmarks").joinpath(PAPER_NUMBERS_FILE).read_text(encoding="utf-8"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``tki-bench paper``."""
    g = parser.add_argument_group("paper")
    g.add_argument("--pretrained", default=None, metavar="FILE",
                   help="CLIP weights (local file or open_clip tag); without it CLIP is random and the numbers mean nothing")
    g.add_argument("--model", default=None,
                   help=f"open_clip architecture (default ViT-B-32; --quick {QUICK['model']}); OpenAI weights need ViT-B-32-quickgelu")
    g.add_argument("--dataset-dir", type=Path, default=None,
                   help="<root>/<domain>/<class>/<image>; default $TKI_PACS_DIR, else ../shared/data/pacs/images")
    g.add_argument("--tables", default=",".join(TABLES), help="paper tables to run (default 3,5,6,7)")
    g.add_argument("--figures", default=",".join(FIGURES), help="paper figures to draw (default 3,5; 'none' to skip)")
    g.add_argument("--per-class", type=int, default=None,
                   help=f"images per (domain, class), seeded sample (default all; --quick {QUICK['per_class']})")
    g.add_argument("--prompts", type=int, default=None, help="P of every run but the sweep (default 20, the paper's)")
    g.add_argument("--sweep", default=None, help="P values of Figure 5 (default 2,5,10,20,30; --quick 2,4)")
    g.add_argument("--steps-expand", type=int, default=None, help="stage-1 steps per run (default 200)")
    g.add_argument("--steps-aggregate", type=int, default=None, help="stage-2 steps per run (default 500)")
    g.add_argument("--k", type=int, default=200, help="k of mAP@k and Prec@k (default 200, the paper's)")
    g.add_argument("--seed", type=int, default=0, help="training and sampling seed (default 0)")
    g.add_argument("--batch-size", type=int, default=32, help="images per CLIP forward (default 32)")
    g.add_argument("--device", default="cpu", help="torch device (default cpu)")
    g.add_argument("--work-dir", type=Path, default=None, help="where the checkpoints go (default: a temporary folder)")


def _csv(text: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    from tki_sdk.common.errors import UsageError

    if text.strip() == "none":
        return []
    got = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in got if t not in allowed]
    if bad:
        raise UsageError(f"{flag}: unknown {bad}; choose from {', '.join(allowed)} (comma-separated) or none")
    return got


class _Features:
    """CLIP image features of every dataset image (computed once) and the heads applied to them."""

    def __init__(self, clip: Any, ds: DomainDataset, batch_size: int, device: str, progress: bool) -> None:
        import torch
        from tqdm.auto import tqdm

        from tki_sdk.common.model_metadata import PreprocessConfig
        from tki_sdk.runtime.engine.preprocess import Preprocessor

        pre = Preprocessor(PreprocessConfig.from_dict(dict(clip.preprocess_cfg)))
        visual = clip.model.visual.to(device).eval()
        self.feats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        bar = tqdm(total=len(ds), desc="CLIP image features", unit="img", disable=not progress, leave=False)
        for d in ds.domains:
            paths = [str(p) for p in ds.paths(d)]
            out = []
            for s in range(0, len(paths), batch_size):
                x = torch.from_numpy(pre.batch(paths[s : s + batch_size])).to(device)
                with torch.inference_mode():
                    out.append(visual(x).float().cpu().numpy())
                bar.update(len(paths[s : s + batch_size]))
            self.feats[d] = (np.concatenate(out), ds.labels(d))
        bar.close()

    def vanilla(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return self.feats  # scored by cosine: the L2 normalisation is the metric's

    def head(self, checkpoint: Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], Any]:
        """Raw head outputs h(f) (ball points for a hyperbolic head) of every image, and the head."""
        import torch

        from tki_sdk.train.checkpoint import load_checkpoint
        from tki_sdk.train.head import HeadConfig, HyperbolicMLP

        tensors, cfg = load_checkpoint(checkpoint)
        head = HyperbolicMLP(HeadConfig.from_dict(cfg.head))
        head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
        head.eval()
        out = {}
        with torch.inference_mode():
            for d, (f, lab) in self.feats.items():
                out[d] = (head(torch.from_numpy(f)).double().numpy(), lab)
        return out, head


def _letters(domains: list[str], numbers: dict[str, Any]) -> tuple[str | None, dict[str, str]]:
    """(paper dataset, our domain -> paper letter/name) when the dataset's domains are a paper dataset's."""
    for name in ("PACS", "DomainNet"):
        m = numbers["domains"][name]
        inv = {v.lower(): k for k, v in m.items()}
        if {d.lower() for d in domains} <= set(inv):
            return name, {d: inv[d.lower()] for d in domains}
    return None, {d: d for d in domains}


def _paper_cell(numbers: dict[str, Any], table: str, dataset: str | None, method: str, query: str, gallery: str,
                metric: str) -> float | None:
    for c in numbers["cells"]:
        if (c["table"], c["dataset"], c["method"], c["query"], c["gallery"], c["metric"]) == (
                table, dataset, method, query, gallery, metric):
            return float(c["value"])
    return None


def _render(table_no: str, rows: list[tuple[str, str, AccuracyTable]], queries: list[str], letters: dict[str, str],
            numbers: dict[str, Any], dataset: str | None, metric_cols: list[tuple[str, str]], avg_name: str) -> tuple[str, list[dict[str, Any]]]:
    """Paper layout: per (query domain, method) three lines -- ours, the paper's, ours minus the paper's (pp).
    ``rows``: (label, paper method name, our table); ``metric_cols``: (paper column, our metric)."""
    cells_out: list[dict[str, Any]] = []
    galleries = [d for d in rows[0][2].domains]
    headers = ["Query", "Method", "source"]
    gal_order = [g for g in galleries]
    headers += [f"→{letters[g]} {pc}" for g in gal_order for pc, _ in metric_cols] + [f"{avg_name} {pc}" for pc, _ in metric_cols]
    body = []
    for q in queries:
        for label, pmethod, t in rows:
            if q not in t.cells:
                continue
            ours, paper, delta = [], [], []
            for g in gal_order + [avg_name]:
                for pc, ours_metric in metric_cols:
                    if g == q:
                        ours.append("-"), paper.append("-"), delta.append("-")
                        continue
                    v = t.row_average(q, ours_metric) if g == avg_name else t.cells[q][g][ours_metric]
                    pg = g if g == avg_name else letters[g]
                    pv = _paper_cell(numbers, table_no, dataset, pmethod, letters[q], pg, pc) if pmethod else None
                    ours.append(f"{100 * v:.2f}")
                    paper.append("" if pv is None else f"{pv:.2f}")
                    delta.append("" if pv is None else f"{100 * v - pv:+.2f}")
                    cells_out.append({"method": label, "paper_method": pmethod, "query": q, "gallery": g,
                                      "metric": ours_metric, "paper_column": pc, "ours": 100 * v, "paper": pv,
                                      "diff_pp": None if pv is None else 100 * v - pv})
            body.append([letters[q], label, "ours"] + ours)
            if pmethod:
                body.append(["", "", "paper"] + paper)
                body.append(["", "", "Δ (pp)"] + delta)
    md = markdown_table(headers, body, align=["l", "l", "l"] + ["r"] * (len(headers) - 3))
    return md, cells_out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """``tki-bench paper``: see the module docstring."""
    from tki_sdk.common.errors import UsageError

    tables = _csv(args.tables, TABLES, "--tables")
    figures = _csv(args.figures, FIGURES, "--figures")
    if not tables and not figures:
        raise UsageError("nothing to run: give --tables and/or --figures")
    q = args.quick
    model = args.model or (QUICK["model"] if q else "ViT-B-32")
    per_class = args.per_class if args.per_class is not None else (QUICK["per_class"] if q else None)
    prompts = args.prompts or (QUICK["prompts"] if q else 20)
    steps_e = args.steps_expand if args.steps_expand is not None else (QUICK["steps_expand"] if q else 200)
    steps_a = args.steps_aggregate if args.steps_aggregate is not None else (QUICK["steps_aggregate"] if q else 500)
    try:
        sweep = [int(v) for v in (args.sweep or (QUICK["sweep"] if q else "2,5,10,20,30")).split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--sweep {args.sweep!r}: give comma-separated integers, e.g. 2,5,10,20") from None
    if prompts < 2 or any(p < 2 for p in sweep):
        raise UsageError("P (--prompts, --sweep) must be at least 2: L_max compares domain vectors")
    if (per_class is not None and per_class < 1) or args.k < 1 or args.batch_size < 1:
        raise UsageError("--per-class, --k and --batch-size must be >= 1")
    root = dataset_dir(args.dataset_dir, required_by="paper")
    try:
        ds = DomainDataset(root).sample(per_class, seed=args.seed)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None
    if len(ds.domains) < 2:
        raise UsageError(f"{root} has {len(ds.domains)} domain(s); cross-domain retrieval needs at least 2")
    progress = not getattr(args, "no_progress", False)
    numbers = paper_numbers()
    dataset, letters = _letters(ds.domains, numbers)
    k = args.k
    seconds: dict[str, Any] = {"train": {}, "tables": {}, "figures": {}}
    t_all = time.perf_counter()

    from tki_sdk.train.clip import ClipLoadError, load_clip
    from tki_sdk.train.trainer import TrainConfig, train

    t0 = time.perf_counter()
    try:
        clip = load_clip(model, args.pretrained, device=args.device, init_seed=0)
    except (ClipLoadError, FileNotFoundError, ValueError) as e:
        raise UsageError(str(e).splitlines()[0]) from None
    weights = describe_weights(clip.weights)
    meaningful = RANDOM_INIT not in weights
    feats = _Features(clip, ds, args.batch_size, args.device, progress)
    seconds["embed_images"] = time.perf_counter() - t0

    tmp = None
    work = args.work_dir
    if work is None:
        tmp = tempfile.TemporaryDirectory(prefix="tki-paper-")
        work = Path(tmp.name)
    classes = list(ds.classes)
    runs: dict[str, Path] = {}
    run_settings: dict[str, dict[str, Any]] = {}

    def trained(name: str, **kw: Any) -> Path:
        if name not in runs:
            cfg = TrainConfig(model_name=model, classes=classes, out=str(Path(work) / name), pretrained=args.pretrained,
                              prompts=kw.pop("prompts", prompts), steps_expand=steps_e, steps_aggregate=steps_a,
                              seed=args.seed, device=args.device, progress=progress, **kw)
            t = time.perf_counter()
            runs[name] = train(cfg)
            seconds["train"][name] = time.perf_counter() - t
            run_settings[name] = {"prompts": cfg.prompts, "losses": cfg.losses, "labels": cfg.labels,
                                  "geometry": cfg.geometry, "temperature_rule": cfg.temperature_rule}
        return runs[name]

    def table(emb: Any, name: str, metric: str = "cos", curvature: float | None = None, ks: tuple[int, ...] = (k,),
              full_map: bool = True) -> AccuracyTable:
        return cross_domain_table(emb, method=name, weights=weights, ks=ks, full_map=full_map, metric=metric,
                                  curvature=curvature)

    def own(name: str) -> float:
        return seconds["train"].get(name, 0.0)

    out_tables: dict[str, Any] = {}
    md_parts = [] if meaningful else [f"**{NO_MEANING}**"]
    md_parts.append(f"Weights: {weights}. Dataset: {root} ({dataset or 'not a paper dataset'}; "
                    f"{per_class or 'all'} per class; {sum(ds.counts().values())} images).")
    mk = [("mAP", f"mAP@{k}"), ("Prec", f"Prec@{k}")]
    base = None
    if tables or "3" in figures:
        t = time.perf_counter()
        base = trained("base")
        base_emb, base_head = feats.head(base)
        seconds["base_run"] = time.perf_counter() - t
    vanilla_t = table(feats.vanilla(), "Vanilla CLIP")
    tki_cos = table(base_emb, "TKI (cosine)") if base is not None else None
    pacs_like = dataset == "PACS"

    if "3" in tables:
        t = time.perf_counter()
        curv = base_head.config.curvature
        rows = [("Vanilla CLIP", "Vanilla CLIP", vanilla_t), ("TKI (cosine)", "TKI", tki_cos),
                ("TKI (inner product)", None, table(base_emb, "TKI (inner product)", "ip")),
                ("TKI (Poincaré)", None, table(base_emb, "TKI (Poincaré)", "poincare", curv))]
        md, cells = _render("3", rows, ds.domains, letters, numbers, dataset if pacs_like else None, mk, "Avg.")
        seconds["tables"]["3"] = time.perf_counter() - t
        out_tables["3"] = {"cells": cells, "tables": [r[2].to_dict() for r in rows], "seconds_own": seconds["tables"]["3"]}
        md_parts.append(f"### Table 3 (PACS half): cross-domain retrieval, mAP@{k} / Prec@{k}\n\n{md}")

    query5 = next((d for d in ds.domains if letters.get(d) == "A"), ds.domains[0])
    if "5" in tables:
        t = time.perf_counter()
        rows = [("neither (stage 1 skipped)", "neither", table(feats.head(trained("losses-none", losses="none"))[0], "neither")),
                ("L_max only", "L_max only", table(feats.head(trained("losses-max", losses="max"))[0], "L_max only")),
                ("L_min only", "L_min only", table(feats.head(trained("losses-min", losses="min"))[0], "L_min only")),
                ("both", "both", tki_cos)]
        md, cells = _render("5", rows, [query5], letters, numbers, dataset if pacs_like else None, mk, "Avg.")
        seconds["tables"]["5"] = time.perf_counter() - t
        out_tables["5"] = {"cells": cells, "tables": [r[2].to_dict() for r in rows],
                           "seconds_own": seconds["tables"]["5"]}
        md_parts.append(f"### Table 5: stage-1 losses (query {query5})\n\n{md}\n\nThe paper's 'neither' row equals "
                        "its vanilla CLIP baseline; ours skips stage 1 and still trains the head.")

    if "6" in tables:
        t = time.perf_counter()
        rand = trained("labels-random", labels="random", label_seed=args.seed)
        rows = [("Baseline (vanilla CLIP)", "Baseline (vanilla CLIP)", vanilla_t),
                ("Strategy 2 (random labels)", "Strategy 2 (random labels)", table(feats.head(rand)[0], "Strategy 2")),
                ("Strategy 1 (true labels)", "Strategy 1 (true labels)", tki_cos)]
        md, cells = _render("6", rows, [query5], letters, numbers, dataset if pacs_like else None, mk, "Avg.")
        seconds["tables"]["6"] = time.perf_counter() - t
        words = json.loads((rand / "config.json").read_text())["labels"]["prompt_labels"]
        out_tables["6"] = {"cells": cells, "tables": [r[2].to_dict() for r in rows], "random_labels": words,
                           "seconds_own": seconds["tables"]["6"]}
        md_parts.append(f"### Table 6: label strategies (query {query5}; strategy 2 used {', '.join(words)})\n\n{md}")

    if "7" in tables:
        t = time.perf_counter()
        p1 = [("Prec@1", "Prec@1")]
        ks7 = (1,)
        eu = trained("geometry-euclidean", geometry="euclidean")
        rows = [("Vanilla CLIP", "Vanilla CLIP", table(feats.vanilla(), "Vanilla CLIP", ks=ks7, full_map=False)),
                ("w/ non-Euclidean MLP", "non-Euclidean MLP", table(base_emb, "non-Euclidean", ks=ks7, full_map=False)),
                ("w/ Euclidean MLP", "Euclidean MLP", table(feats.head(eu)[0], "Euclidean", ks=ks7, full_map=False))]
        dn = dataset if dataset == "DomainNet" else None
        md, cells = _render("7", rows, ds.domains, letters, numbers, dn, p1, "Average")
        seconds["tables"]["7"] = time.perf_counter() - t
        out_tables["7"] = {"cells": cells, "tables": [r[2].to_dict() for r in rows], "seconds_own": seconds["tables"]["7"],
                           "euclidean_aggregation": json.loads((eu / "config.json").read_text())["aggregation"]}
        note = "" if dn else " The paper's Table 7 is DomainNet; this dataset is not, so no paper numbers sit beside ours."
        md_parts.append(f"### Table 7: hyperbolic vs Euclidean head, Prec@1 (fair-temperature rule: matched)\n\n{md}\n\n{note.strip()}")

    plots = []
    fig_data: dict[str, Any] = {}
    suffix = "" if meaningful else " (random weights: means nothing)"
    if "3" in figures:
        t = time.perf_counter()
        png, pts = _tsne_plot(clip, base, classes, Path(args.suite_dir) / f"{_stem(args, q)}_figure3_tsne.png", suffix,
                              args.seed, args.device)
        plots.append(str(png))
        fig_data["3"] = {"points": pts}
        seconds["figures"]["3"] = time.perf_counter() - t
    if "5" in figures:
        t = time.perf_counter()
        curve = []
        for p in sweep:
            ck = base if p == prompts and base is not None else trained(f"prompts-{p}", prompts=p)
            tab = table(feats.head(ck)[0], f"P={p}")
            curve.append({"P": p, f"mAP@{k}": tab.average(f"mAP@{k}"), f"Prec@{k}": tab.average(f"Prec@{k}")})
        png = _sweep_plot(curve, k, Path(args.suite_dir) / f"{_stem(args, q)}_figure5_prompts.png", suffix)
        plots.append(str(png))
        fig_data["5"] = {"curve": curve, "paper": "a figure only; no numbers in the paper's text"}
        seconds["figures"]["5"] = time.perf_counter() - t
        md_parts.append("### Figure 5: retrieval against P (average over all pairs)\n\n" + markdown_table(
            ["P", f"mAP@{k} %", f"Prec@{k} %"],
            [[str(c["P"]), f"{100 * c[f'mAP@{k}']:.2f}", f"{100 * c[f'Prec@{k}']:.2f}"] for c in curve],
            align=["r", "r", "r"]))
    seconds["total"] = time.perf_counter() - t_all
    wall = {t_: seconds["tables"][t_] for t_ in seconds["tables"]}
    md_parts.append("### Wall time (s)\n\n" + markdown_table(
        ["part", "seconds"],
        [["CLIP image features (shared)", f"{seconds['embed_images']:.1f}"]]
        + ([["base TKI run (shared by tables 3, 5, 6, 7, figures 3, 5)", f"{seconds['base_run']:.1f}"]] if base else [])
        + [[f"table {t_} (own runs + scoring)", f"{v:.1f}"] for t_, v in wall.items()]
        + [[f"figure {f} (own runs + drawing)", f"{v:.1f}"] for f, v in seconds["figures"].items()]
        + [["total", f"{seconds['total']:.1f}"]], align=["l", "r"]))
    if not meaningful:
        md_parts.append(f"**{NO_MEANING}**")
    if tmp is not None:
        tmp.cleanup()
    return {
        "name": _stem(args, q),
        "numbers_meaningful": meaningful,
        "warning": None if meaningful else NO_MEANING,
        "weights": weights,
        "model": model,
        "dataset": {"root": str(ds.root), "paper_dataset": dataset, "domains": ds.domains, "letters": letters,
                    "classes": ds.classes, "per_class": per_class, "seed": args.seed, "images": ds.counts()},
        "settings": {"prompts": prompts, "steps_expand": steps_e, "steps_aggregate": steps_a, "k": k,
                     "sweep": sweep, "column_metrics": numbers["column_metrics"], "runs": run_settings},
        "tables": out_tables,
        "figures": fig_data,
        "seconds": seconds,
        "plots": plots,
        "markdown": "\n\n".join(md_parts),
    }


def _stem(args: argparse.Namespace, quick: bool) -> str:
    return getattr(args, "name", None) or ("quick" if quick else "results")


def _tsne_plot(clip: Any, checkpoint: Path, classes: list[str], path: Path, suffix: str, seed: int,
               device: str) -> tuple[Path, list[dict[str, Any]]]:
    """Figure 3: t-SNE (scikit-learn) of the P x C prompt features t_pi of ``checkpoint``."""
    import torch
    from sklearn.manifold import TSNE

    from tki_sdk.train.checkpoint import load_checkpoint
    from tki_sdk.train.prompts import PromptBank

    from tki_sdk.benchmarks.plots import _plt, _save

    tensors, cfg = load_checkpoint(checkpoint)
    labels = (cfg.labels or {}).get("prompt_labels") or cfg.classes
    bank = PromptBank(clip, labels, int(cfg.prompts)).to(device)
    with torch.no_grad():
        bank.domain_vectors.copy_(tensors["domain_vectors"].to(bank.domain_vectors.dtype))
        t = bank.prompt_features(chunk=256).float().cpu().numpy()  # [P, C, D]
    p, c, d = t.shape
    x = t.reshape(p * c, d)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    xy = TSNE(n_components=2, perplexity=float(min(30.0, (p * c - 1) / 3)), init="pca", random_state=seed,
              metric="cosine").fit_transform(x)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 6))
    markers = "osD^v<>phX*P"
    cmap = plt.get_cmap("tab20", p)
    for j in range(c):
        for i in range(p):
            r = i * c + j
            ax.scatter(xy[r, 0], xy[r, 1], color=cmap(i), marker=markers[j % len(markers)], s=28,
                       label=labels[j] if i == 0 else None)
    ax.legend(title="class (marker)", fontsize=7, loc="best")
    ax.set_title(f"t-SNE of the {p} x {c} prompt features t_pi; colour = domain vector{suffix}", fontsize=9)
    pts = [{"p": int(r // c), "class": labels[r % c], "x": float(xy[r, 0]), "y": float(xy[r, 1])} for r in range(p * c)]
    return _save(fig, path), pts


def _sweep_plot(curve: list[dict[str, Any]], k: int, path: Path, suffix: str) -> Path:
    from tki_sdk.benchmarks.plots import _plt, _save

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    ps = [r["P"] for r in curve]
    for m in (f"mAP@{k}", f"Prec@{k}"):
        ax.plot(ps, [100 * r[m] for r in curve], marker="o", label=m)
    ax.set_xlabel("P (domain word vectors)")
    ax.set_ylabel("%")
    ax.legend()
    ax.set_title(f"Figure 5: retrieval against P{suffix}", fontsize=9)
    return _save(fig, path)
