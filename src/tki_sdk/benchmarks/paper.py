"""``tki-bench paper``: the paper's tables and figures with one command, our numbers beside the paper's.

Protocol (section 5.1): queries from one domain, the gallery from each other domain. Every run computes every
mAP convention -- whole-gallery mAP, mAP@200 by hits, mAP@200 over min(200, R) (:mod:`.metrics`) -- with
Prec@200 and Prec@1. The paper's tables head a column "mAP" without saying which; its own numbers decide it
(``paper_numbers.json``, ``map_convention``: whole-gallery mAP, the evidence kept as
``tests/test_paper_conventions.py``), and every printed table names the convention it compares with;
``--map-convention hits|min`` compares with another. The paper's numbers come from ``paper_numbers.json``
(transcribed cell by cell, Tables 2-7); cells where the paper contradicts itself (``known_inconsistencies``)
are marked † so that a difference there is not read as ours.

What runs, on the dataset given (``--dataset pacs|officehome|domainnet`` in its published layout,
:func:`~.datasets.read_dataset`; DomainNet's official ``--split``):

- one CLIP (``--model``, ``--pretrained FILE``; random init without it) embeds every image once; every run
  below applies its own head to these features, so the image encoder runs once per image;
- TKI runs (``tki train`` with the paper's settings, P = 20, each ablation switch once): the base run
  (both losses, true labels, hyperbolic head); Table 5: ``--losses max | min`` (and ``none``, a row of ours);
  Table 6: ``--labels random``; Table 7: ``--geometry euclidean`` with ``--temperature-rule as_written``
  (the paper's experiment) and ``matched`` (a row of ours); Figure 5: ``--prompts`` for each P of ``--sweep``;
- Table 2 (DomainNet), Table 3 (PACS half, Office-Home half) and Table 4 (PACS with RN50 / ViT-L/14,
  ``--model``) rows: vanilla CLIP and TKI by cosine; Table 3 adds TKI by inner product and Poincaré distance
  on the same ball points (rows of ours). A table or half whose dataset or backbone is not the run's is
  printed with the paper's numbers only and the command that runs it;
- Table 5's row without either loss is, in the paper, its vanilla CLIP baseline copied cell for cell: no
  TKI training. Ours is vanilla CLIP too; a run whose stage 1 was skipped (random domain vectors, head
  trained) is printed as a separate row of ours, with no paper number beside it;
- Figure 3: t-SNE of the base run's P x C prompt features t_pi (colour = domain vector, marker = class);
- Figure 5: mAP@200 and Prec@200 (average over all pairs) against P. The paper gives this curve only as a
  figure, so no numbers sit beside ours.

Every table records its wall time (its own training runs plus scoring; the shared base run and the image
embedding are recorded apart). With random weights every number means nothing about the method: the suite
says so in the tables, the JSON and the plots.
"""
from __future__ import annotations

import json
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from tki_sdk.benchmarks.accuracy import (
    RANDOM_INIT,
    AccuracyTable,
    cross_domain_table,
    describe_weights,
)
from tki_sdk.benchmarks.datasets import (
    PAPER_DATASETS,
    DomainDataset,
    dataset_dir,
    read_dataset,
)
from tki_sdk.benchmarks.metrics import MAP_CONVENTIONS, map_key
from tki_sdk.benchmarks.results import markdown_table
from tki_sdk.common.errors import UsageError
from tki_sdk.common.model_metadata import PreprocessConfig
from tki_sdk.common.progress import progress_bar
from tki_sdk.benchmarks.options import SuiteOptions

__all__ = ["run", "paper_numbers", "paper_backbone", "PAPER_NUMBERS_FILE"]

PAPER_NUMBERS_FILE = "paper_numbers.json"
TABLES = ("2", "3", "4", "5", "6", "7")
#: open_clip architecture -> the paper's backbone name (Tables 2, 3, 5-7: ViT-B/32; Table 4: the other two).
#: How a table title names the convention its "mAP" column is read as.
CONVENTION_NAMES = {"whole": "mAP over the whole gallery", "hits": "mAP@{k} by hits",
                    "min": "mAP@{k} over min({k}, R)"}
BACKBONES = {"ViT-B-32": "ViT-B/32", "RN50": "ResNet-50", "ViT-L-14": "ViT-L/14"}
FIGURES = ("3", "5")
QUICK = {"model": "TKI-Tiny-ViT", "per_class": 3, "steps_expand": 3, "steps_aggregate": 10, "prompts": 4,
         "sweep": "2,4"}
NO_MEANING = ("RANDOM WEIGHTS: CLIP was randomly initialised, so every number in this report means nothing about the "
              "method; the run only shows that the protocol works end to end.")


def paper_numbers() -> dict[str, Any]:
    """``paper_numbers.json``: the paper's cells (``table``, ``dataset``, ``method``, ``query``, ``gallery``,
    ``metric``, ``value`` in %, ``line`` of the paper's text) plus domain letters and notes."""
    return json.loads(resources.files("tki_sdk.benchmarks").joinpath(PAPER_NUMBERS_FILE).read_text(encoding="utf-8"))


def _csv(text: str, allowed: tuple[str, ...], flag: str) -> list[str]:

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

        from tki_sdk.runtime.engine.preprocess import Preprocessor

        pre = Preprocessor(PreprocessConfig.from_dict(dict(clip.preprocess_cfg)))
        visual = clip.model.visual.to(device).eval()
        self.feats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        bar = progress_bar(len(ds), "CLIP image features", unit="img", enabled=bool(progress), leave=False)
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


def _letters(domains: list[str], numbers: dict[str, Any], dataset: str) -> dict[str, str]:
    """Our domain folder -> the paper's letter / name in ``dataset`` (case-insensitive; unknown folders keep
    their name and get no paper numbers)."""
    inv = {v.lower(): k for k, v in numbers["domains"][dataset].items()}
    return {d: inv.get(d.lower(), d) for d in domains}


def paper_backbone(model: str) -> str | None:
    """The paper's name of an open_clip architecture (``ViT-B-32[-quickgelu]`` -> ``ViT-B/32``, ``RN50`` ->
    ``ResNet-50``, ``ViT-L-14`` -> ``ViT-L/14``); None for one the paper does not use."""
    return BACKBONES.get(model.removesuffix("-quickgelu"))


class _Paper:
    """The paper's cells indexed by (table, dataset, backbone, method, query, gallery, metric), with the cells the
    paper contradicts itself on (``known_inconsistencies``)."""

    def __init__(self, numbers: dict[str, Any]) -> None:
        self.numbers = numbers
        self.cells = {(c["table"], c["dataset"], c.get("backbone"), c["method"], c["query"], c["gallery"],
                       c["metric"]): c["value"] for c in numbers["cells"]}
        self.flagged = {(i["table"], i["dataset"], i.get("backbone"), i["method"], i["query"], i["gallery"],
                         i["metric"]): i["note"] for i in numbers["known_inconsistencies"] if i["kind"] == "row average"}
        self.copies = {(i["table"], i["method"]): i["note"] for i in numbers["known_inconsistencies"] if i["kind"] == "copy"}

    def get(self, table: str, key: tuple[str, str | None] | None, method: str | None, query: str, gallery: str,
            metric: str) -> tuple[float | None, str | None]:
        """(value, the note when the paper contradicts itself on this cell) or (None, None)."""
        if key is None or method is None:
            return None, None
        k = (table, key[0], key[1], method, query, gallery, metric)
        return self.cells.get(k), self.flagged.get(k)

    def block(self, table: str, dataset: str, backbone: str | None) -> list[tuple[str, list[str]]]:
        """The (query, methods) of one table block, in the paper's order."""
        out: dict[str, list[str]] = {}
        for c in self.numbers["cells"]:
            if (c["table"], c["dataset"], c.get("backbone")) == (table, dataset, backbone):
                ms = out.setdefault(c["query"], [])
                if c["method"] not in ms:
                    ms.append(c["method"])
        return list(out.items())


def _fmt_paper(v: float | None, note: str | None) -> str:
    return "" if v is None else f"{v:.2f}" + (" †" if note else "")


def _render(table_no: str, rows: list[tuple[str, str | None, AccuracyTable]], queries: list[str],
            letters: dict[str, str], paper: _Paper, key: tuple[str, str | None] | None,
            metric_cols: list[tuple[str, str]], avg_name: str) -> tuple[str, list[dict[str, Any]], list[str]]:
    """Paper layout: per (query domain, method) three lines -- ours, the paper's, ours minus the paper's (pp).
    ``rows``: (label, paper method name or None for a row of ours only, our table); ``key``: the paper block
    (dataset, backbone) compared with, None for ours alone; ``metric_cols``: (paper column, our metric).
    A paper value the paper contradicts itself on is marked † and its note returned."""
    cells_out: list[dict[str, Any]] = []
    notes: list[str] = []
    gal_order = list(rows[0][2].domains)
    headers = ["Query", "Method", "source"]
    headers += [f"→{letters[g]} {pc}" for g in gal_order for pc, _ in metric_cols] + [f"{avg_name} {pc}" for pc, _ in metric_cols]
    body = []
    for q in queries:
        for label, pmethod, t in rows:
            if q not in t.cells:
                continue
            ours, theirs, delta = [], [], []
            has_paper = False
            for g in gal_order + [avg_name]:
                for pc, ours_metric in metric_cols:
                    if g == q:
                        ours.append("-"), theirs.append("-"), delta.append("-")
                        continue
                    v = t.row_average(q, ours_metric) if g == avg_name else t.cells[q][g][ours_metric]
                    pg = g if g == avg_name else letters[g]
                    pv, note = paper.get(table_no, key, pmethod, letters[q], pg, pc)
                    has_paper = has_paper or pv is not None
                    if note and note not in notes:
                        notes.append(note)
                    ours.append(f"{100 * v:.2f}")
                    theirs.append(_fmt_paper(pv, note))
                    delta.append("" if pv is None else f"{100 * v - pv:+.2f}" + (" †" if note else ""))
                    cells_out.append({"method": label, "paper_method": pmethod, "query": q, "gallery": g,
                                      "metric": ours_metric, "paper_column": pc, "ours": 100 * v, "paper": pv,
                                      "diff_pp": None if pv is None else 100 * v - pv,
                                      "paper_inconsistent": note})
            body.append([letters[q], label, "ours"] + ours)
            if has_paper:
                body.append(["", "", "paper"] + theirs)
                body.append(["", "", "Δ (pp)"] + delta)
    md = markdown_table(headers, body, align=["l", "l", "l"] + ["r"] * (len(headers) - 3))
    return md, cells_out, notes


def _render_paper_only(table_no: str, paper: _Paper, dataset: str, backbone: str | None,
                       metric_cols: list[str], avg_name: str) -> tuple[str, list[str]]:
    """One block of a paper table as the paper prints it (paper's numbers only), † on self-contradicting cells."""
    letters = list(paper.numbers["domains"][dataset])
    headers = ["Query", "Method"] + [f"→{g} {m}" for g in letters for m in metric_cols] + [f"{avg_name} {m}" for m in metric_cols]
    body, notes = [], []
    for q, methods in paper.block(table_no, dataset, backbone):
        for method in methods:
            row = [q, method + (" ‡" if (table_no, method) in paper.copies else "")]
            for g in letters + [avg_name]:
                for m in metric_cols:
                    v, note = paper.get(table_no, (dataset, backbone), method, q, g, m)
                    if note and note not in notes:
                        notes.append(note)
                    row.append("-" if g == q else _fmt_paper(v, note))
            body.append(row)
    for (t, method), note in paper.copies.items():
        if t == table_no:
            notes.append(f"‡ {method}: {note}")
    return markdown_table(headers, body, align=["l", "l"] + ["r"] * (len(headers) - 2)), notes


def _notes_md(notes: list[str]) -> str:
    return "\n".join(f"- {n if n.startswith('‡') else '† the paper contradicts itself here: ' + n}" for n in notes)


def run(args: SuiteOptions) -> dict[str, Any]:
    """``tki-bench paper``: see the module docstring."""

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
    numbers = paper_numbers()
    paper = _Paper(numbers)
    chosen = numbers["map_convention"]["chosen"]
    conv = args.map_convention or chosen
    if conv not in MAP_CONVENTIONS:
        raise UsageError(f"--map-convention {conv!r}: choose from {', '.join(MAP_CONVENTIONS)}")
    dataset_arg = getattr(args, "dataset", "pacs") or "pacs"
    if dataset_arg not in PAPER_DATASETS:
        raise UsageError(f"--dataset {dataset_arg!r}: choose from {', '.join(PAPER_DATASETS)}")
    if dataset_arg != "pacs" and args.dataset_dir is None:
        raise UsageError(f"--dataset {dataset_arg} needs --dataset-dir: the folder of its published layout")
    root = dataset_dir(args.dataset_dir, required_by="paper")
    try:
        ds = read_dataset(dataset_arg, root, split=args.split).sample(per_class, seed=args.seed)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None
    if len(ds.domains) < 2:
        raise UsageError(f"{root} has {len(ds.domains)} domain(s); cross-domain retrieval needs at least 2")
    progress = not getattr(args, "no_progress", False)
    dataset = PAPER_DATASETS[dataset_arg]
    letters = _letters(ds.domains, numbers, dataset)
    backbone = paper_backbone(model)
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

    ks = tuple(sorted({1, k}))

    def table(emb: Any, name: str, metric: str = "cos", curvature: float | None = None) -> AccuracyTable:
        # every run: whole-gallery mAP, mAP@k by hits, mAP@k:min, Prec@k and Prec@1
        return cross_domain_table(emb, method=name, weights=weights, ks=ks, full_map=True, metric=metric,
                                  curvature=curvature)

    out_tables: dict[str, Any] = {}
    md_parts = [] if meaningful else [f"**{NO_MEANING}**"]
    md_parts.append(f"Weights: {weights}. Model: {model} (the paper's backbone: {backbone or 'none of them'}). "
                    f"Dataset: {root} ({dataset}{', split ' + args.split if dataset == 'DomainNet' else ''}; "
                    f"{per_class or 'all'} per class; {sum(ds.counts().values())} images).")
    others = ", ".join(c for c in MAP_CONVENTIONS if c != conv)
    conv_line = (f"The paper's \"mAP\" column is compared with **{map_key(conv, k)}**: {MAP_CONVENTIONS[conv]}"
                 + (" -- the convention the paper's own numbers support (paper_numbers.json, map_convention)."
                    if conv == chosen else f" -- NOT the convention the paper's own numbers support ({chosen})."
                 ) + f" \"Prec\" is Prec@{k}. Other conventions: --map-convention {others.replace(', ', '|')}; "
                 "all three are in the JSON.")
    md_parts.append(conv_line)
    mk = [("mAP", map_key(conv, k)), ("Prec", f"Prec@{k}")]
    named = f"'mAP' = {CONVENTION_NAMES[conv].format(k=k)}, 'Prec' = Prec@{k}"
    paper_cols = ["mAP", "Prec"]
    main_rows_needed = bool(set(tables) & {"2", "3", "4", "5", "6", "7"}) or "3" in figures
    base = None
    if main_rows_needed:
        t = time.perf_counter()
        base = trained("base")
        base_emb, base_head = feats.head(base)
        seconds["base_run"] = time.perf_counter() - t
    vanilla_t = table(feats.vanilla(), "Vanilla CLIP")
    tki_cos = table(base_emb, "TKI (cosine)") if base is not None else None
    vit_b = backbone in ("ViT-B/32", None)
    bb_note = "" if backbone is not None else (
        f" Our backbone {model} is not one of the paper's (ViT-B/32 in Tables 2, 3, 5-7): the differences "
        "compare different models.")

    def section(title: str, md: str, notes: list[str], extra: str = "") -> None:
        md_parts.append(f"### {title}\n\n{md}" + (f"\n\n{_notes_md(notes)}" if notes else "")
                        + (f"\n\n{extra.strip()}" if extra.strip() else ""))

    def paper_only(t_no: str, ds_name: str, bb: str | None, title: str, how: str, cols: list[str] = paper_cols,
                   avg: str = "Avg.") -> dict[str, Any]:
        md, notes = _render_paper_only(t_no, paper, ds_name, bb, cols, avg)
        section(title + " -- the paper's numbers only" + (f"; {named}" if cols == paper_cols else ""), md, notes,
                f"Ours: {how}")
        return {"paper_only": True, "dataset": ds_name, "backbone": bb, "how_to_run": how}

    main_rows = [("Vanilla CLIP", "Vanilla CLIP", vanilla_t), ("TKI (cosine)", "TKI", tki_cos)]

    if "2" in tables:
        t = time.perf_counter()
        if dataset == "DomainNet":
            md, cells, notes = _render("2", main_rows, ds.domains, letters, paper,
                                       ("DomainNet", None) if vit_b else None, mk, "Avg.")
            section(f"Table 2 (DomainNet); {named}", md, notes, bb_note)
            out_tables["2"] = {"cells": cells, "tables": [r[2].to_dict() for r in main_rows]}
        else:
            out_tables["2"] = paper_only("2", "DomainNet", None, "Table 2 (DomainNet)",
                                         "tki-bench paper --dataset domainnet --dataset-dir <DomainNet> [--split test]")
        seconds["tables"]["2"] = out_tables["2"]["seconds_own"] = time.perf_counter() - t

    if "3" in tables:
        t = time.perf_counter()
        out_tables["3"] = {}
        for half, ds_name, arg in (("PACS half", "PACS", "pacs"), ("Office-Home half", "Office-Home", "officehome")):
            if dataset == ds_name and vit_b:
                curv = base_head.config.curvature
                rows = main_rows + [("TKI (inner product)", None, table(base_emb, "TKI (inner product)", "ip")),
                                    ("TKI (Poincaré)", None, table(base_emb, "TKI (Poincaré)", "poincare", curv))]
                md, cells, notes = _render("3", rows, ds.domains, letters, paper, (ds_name, None), mk, "Avg.")
                section(f"Table 3 ({half}): cross-domain retrieval; {named}", md, notes,
                        bb_note + " TKI (inner product) and TKI (Poincaré) score the same ball points otherwise: "
                        "rows of ours, not in the paper.")
                out_tables["3"][ds_name] = {"cells": cells, "tables": [r[2].to_dict() for r in rows]}
            else:
                out_tables["3"][ds_name] = paper_only(
                    "3", ds_name, None, f"Table 3 ({half})",
                    f"tki-bench paper --dataset {arg} --dataset-dir <{ds_name}> --model ViT-B-32-quickgelu "
                    "--pretrained <weights>")
        seconds["tables"]["3"] = out_tables["3"]["seconds_own"] = time.perf_counter() - t

    if "4" in tables:
        t = time.perf_counter()
        out_tables["4"] = {}
        for bb, arch in (("ResNet-50", "RN50"), ("ViT-L/14", "ViT-L-14")):
            if dataset == "PACS" and backbone == bb:
                md, cells, notes = _render("4", main_rows, ds.domains, letters, paper, ("PACS", bb), mk, "Avg.")
                section(f"Table 4 ({bb} on PACS); {named}", md, notes)
                out_tables["4"][bb] = {"cells": cells, "tables": [r[2].to_dict() for r in main_rows]}
            else:
                out_tables["4"][bb] = paper_only(
                    "4", "PACS", bb, f"Table 4 ({bb} on PACS)",
                    f"tki-bench paper --dataset pacs --model {arch}-quickgelu --pretrained <{arch} weights> --tables 4")
        seconds["tables"]["4"] = out_tables["4"]["seconds_own"] = time.perf_counter() - t

    pacs_key = ("PACS", None) if dataset == "PACS" and vit_b else None
    query5 = next((d for d in ds.domains if letters.get(d) == "A"), ds.domains[0])
    if "5" in tables:
        t = time.perf_counter()
        none_ours = table(feats.head(trained("losses-none", losses="none"))[0], "stage 1 skipped")
        rows = [("none = vanilla CLIP (the paper's row)", "neither", vanilla_t),
                ("L_max only", "L_max only", table(feats.head(trained("losses-max", losses="max"))[0], "L_max only")),
                ("L_min only", "L_min only", table(feats.head(trained("losses-min", losses="min"))[0], "L_min only")),
                ("both", "both", tki_cos),
                ("ours, not in the paper: stage 1 skipped, head trained", None, none_ours)]
        md, cells, notes = _render("5", rows, [query5], letters, paper, pacs_key, mk, "Avg.")
        section(f"Table 5: stage-1 losses (query {query5}); {named}", md, notes,
                "The paper's row without either loss is its vanilla CLIP baseline, copied cell for cell from Table 3: "
                "no TKI training at all. Ours does the same (the row is vanilla CLIP). The last row is a different "
                "experiment of ours -- random domain vectors, head trained -- with no paper number beside it."
                + ("" if pacs_key else " Not PACS with ViT-B/32: no paper numbers beside ours."))
        out_tables["5"] = {"cells": cells, "tables": [r[2].to_dict() for r in rows]}
        if pacs_key is None:
            paper_only("5", "PACS", None, "Table 5", "--dataset pacs with ViT-B/32")
        seconds["tables"]["5"] = out_tables["5"]["seconds_own"] = time.perf_counter() - t

    if "6" in tables:
        t = time.perf_counter()
        rand = trained("labels-random", labels="random", label_seed=args.seed)
        rows = [("Baseline (vanilla CLIP)", "Baseline (vanilla CLIP)", vanilla_t),
                ("Strategy 2 (random labels)", "Strategy 2 (random labels)", table(feats.head(rand)[0], "Strategy 2")),
                ("Strategy 1 (true labels)", "Strategy 1 (true labels)", tki_cos)]
        md, cells, notes = _render("6", rows, [query5], letters, paper, pacs_key, mk, "Avg.")
        words = json.loads((rand / "config.json").read_text())["labels"]["prompt_labels"]
        section(f"Table 6: label strategies (query {query5}; strategy 2 used {', '.join(words)}), "
                f"{named}", md, notes)
        out_tables["6"] = {"cells": cells, "tables": [r[2].to_dict() for r in rows], "random_labels": words}
        if pacs_key is None:
            paper_only("6", "PACS", None, "Table 6", "--dataset pacs with ViT-B/32")
        seconds["tables"]["6"] = out_tables["6"]["seconds_own"] = time.perf_counter() - t

    if "7" in tables:
        t = time.perf_counter()
        p1 = [("Prec@1", "Prec@1")]
        eu = trained("geometry-euclidean", geometry="euclidean", temperature_rule="as_written")
        eu_m = trained("geometry-euclidean-matched", geometry="euclidean", temperature_rule="matched")
        rows = [("Vanilla CLIP", "Vanilla CLIP", vanilla_t),
                ("w/ non-Euclidean MLP", "non-Euclidean MLP", tki_cos),
                ("w/ Euclidean MLP (as written: eq. 6 at τ)", "Euclidean MLP", table(feats.head(eu)[0], "Euclidean")),
                ("ours, not in the paper: Euclidean MLP, matched temperature", None,
                 table(feats.head(eu_m)[0], "Euclidean, matched"))]
        dn = ("DomainNet", None) if dataset == "DomainNet" and vit_b else None
        md, cells, notes = _render("7", rows, ds.domains, letters, paper, dn, p1, "Average")
        section("Table 7: hyperbolic vs Euclidean head, Prec@1", md, notes,
                "The paper's Euclidean row swaps the layer type and keeps eq. 6 and τ (temperature rule as_written). "
                "The matched row is ours: the Euclidean head compared by cosine at c·τ, which bounds its logits as "
                "the ball bounds the hyperbolic head's; it changes the Euclidean loss from dot product to cosine "
                "while the hyperbolic loss still depends on norms inside the ball, so neither row isolates geometry."
                + ("" if dn else " Not DomainNet with ViT-B/32: no paper numbers beside ours."))
        out_tables["7"] = {"cells": cells, "tables": [r[2].to_dict() for r in rows],
                           "euclidean_aggregation": json.loads((eu / "config.json").read_text())["aggregation"],
                           "euclidean_matched_aggregation": json.loads((eu_m / "config.json").read_text())["aggregation"]}
        if dn is None:
            paper_only("7", "DomainNet", None, "Table 7", "--dataset domainnet with ViT-B/32", ["Prec@1"], "Average")
        seconds["tables"]["7"] = out_tables["7"]["seconds_own"] = time.perf_counter() - t

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
        fk = f"mAP@{k}"  # the figure's own axis label: mAP@200
        for p in sweep:
            ck = base if p == prompts and base is not None else trained(f"prompts-{p}", prompts=p)
            tab = table(feats.head(ck)[0], f"P={p}")
            curve.append({"P": p, fk: tab.average(fk), mk[0][1]: tab.average(mk[0][1]), f"Prec@{k}": tab.average(f"Prec@{k}")})
        png = _sweep_plot(curve, k, Path(args.suite_dir) / f"{_stem(args, q)}_figure5_prompts.png", suffix)
        plots.append(str(png))
        fig_data["5"] = {"curve": curve, "paper": "a figure only; no numbers in the paper's text"}
        seconds["figures"]["5"] = time.perf_counter() - t
        cols5 = list(dict.fromkeys([fk, mk[0][1], f"Prec@{k}"]))
        md_parts.append("### Figure 5: retrieval against P (average over all pairs)\n\n" + markdown_table(
            ["P"] + [f"{c} %" for c in cols5], [[str(c["P"])] + [f"{100 * c[m]:.2f}" for m in cols5] for c in curve],
            align=["r"] * (1 + len(cols5))))
    seconds["total"] = time.perf_counter() - t_all
    wall = {t_: seconds["tables"][t_] for t_ in seconds["tables"]}
    md_parts.append("### Wall time (s)\n\n" + markdown_table(
        ["part", "seconds"],
        [["CLIP image features (shared)", f"{seconds['embed_images']:.1f}"]]
        + ([["base TKI run (shared by tables 2-7, figures 3, 5)", f"{seconds['base_run']:.1f}"]] if base else [])
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
        "paper_backbone": backbone,
        "dataset": {"root": str(ds.root), "paper_dataset": dataset, "split": args.split if dataset == "DomainNet" else None,
                    "domains": ds.domains, "letters": letters, "classes": ds.classes, "per_class": per_class,
                    "seed": args.seed, "images": ds.counts()},
        "map_convention": {"used": conv, "column": map_key(conv, k), "definition": MAP_CONVENTIONS[conv],
                           "supported_by_paper_numbers": chosen,
                           "evidence": numbers["map_convention"]["consistent_cells"]},
        "settings": {"prompts": prompts, "steps_expand": steps_e, "steps_aggregate": steps_a, "k": k,
                     "sweep": sweep, "column_metrics": {**numbers["column_metrics"], "mAP": map_key(conv, k)},
                     "runs": run_settings},
        "tables": out_tables,
        "figures": fig_data,
        "seconds": seconds,
        "plots": plots,
        "markdown": "\n\n".join(md_parts),
    }


def _stem(args: SuiteOptions, quick: bool) -> str:
    return getattr(args, "name", None) or ("quick" if quick else "results")


def _tsne_plot(clip: Any, checkpoint: Path, classes: list[str], path: Path, suffix: str, seed: int,
               device: str) -> tuple[Path, list[dict[str, Any]]]:
    """Figure 3: t-SNE (scikit-learn) of the P x C prompt features t_pi of ``checkpoint``."""
    import torch
    from sklearn.manifold import TSNE

    from tki_sdk.benchmarks.plots import _plt, _save
    from tki_sdk.train.checkpoint import load_checkpoint
    from tki_sdk.train.prompts import PromptBank

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
