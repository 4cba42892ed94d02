"""Accuracy suite: the paper's cross-domain retrieval tables (mAP, mAP@200, Prec@200).

Protocol (the paper's): for every ordered pair of distinct domains ``(q, g)``, every image
of domain ``q`` is a query against the gallery of all images of domain ``g``; a gallery
image is relevant when its class equals the query's; images are ranked by cosine
similarity of their embeddings. Per pair: mAP (whole gallery), mAP@200 and Prec@200 as
defined in :mod:`tki_sdk.benchmarks.metrics`; per query domain: the average over its
gallery domains (the paper's "Avg." column); overall: the average over all pairs.

Embeddings come from any *embedding function*: a callable taking a list of image paths
and returning an ``[N, D]`` array (one row per path). Adapters here wrap a torch
``TKIModel`` (trained head or vanilla CLIP) and the torch-free runtime ``Embedder``, so
vanilla CLIP, TKI and every exported artifact are measured the same way and can be
compared side by side (with the mAP each artifact loses against torch).

Every table names the weights it ran on: the CLIP weights file and SHA-256 (or tag), or
"random init: numbers carry no meaning" -- an accuracy figure without real CLIP weights
says nothing about the method.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .datasets import DomainDataset, cross_domain_pairs, dataset_dir
from .metrics import retrieval_metrics
from .results import markdown_table

__all__ = [
    "EmbedFn",
    "RANDOM_INIT",
    "AccuracyTable",
    "describe_weights",
    "embed_dataset",
    "cross_domain_table",
    "render_paper_table",
    "render_comparison",
    "torch_embed_fn",
    "embedder_embed_fn",
    "add_arguments",
    "run",
]

EmbedFn = Callable[[list[str]], np.ndarray]
RANDOM_INIT = "random init: numbers carry no meaning"


def describe_weights(weights: Mapping[str, Any] | None, checkpoint: Mapping[str, Any] | None = None) -> str:
    """One line naming the CLIP weights (file + SHA-256, tag, or random init) and the head checkpoint.

    ``weights`` is the ``weights`` field of ``tki.json`` / ``LoadedClip.weights``
    (``{"source": "random"|"file"|"tag", "ref": ..., "sha256": ...}``); ``checkpoint`` its
    ``checkpoint`` field (``{"path", "sha256"}``) or None.
    """
    w = dict(weights or {})
    src = w.get("source")
    if src in (None, "random") or (not w.get("ref") and not w.get("sha256")):
        desc = RANDOM_INIT
    elif src == "file":
        desc = f"CLIP weights file {w.get('ref')} (sha256 {w.get('sha256') or 'unknown'})"
    else:
        desc = f"CLIP pretrained tag {w.get('ref')}" + (f" (sha256 {w['sha256']})" if w.get("sha256") else "")
    if checkpoint:
        desc += f"; head checkpoint {checkpoint.get('path')} (sha256 {checkpoint.get('sha256') or 'unknown'})"
    return desc


def _metric_names(ks: Sequence[int], full_map: bool = True) -> list[str]:
    return (["mAP"] if full_map else []) + [f"mAP@{k}" for k in ks] + [f"Prec@{k}" for k in ks]


@dataclass
class AccuracyTable:
    """Cross-domain results of one method: ``cells[query][gallery][metric]`` in [0, 1]."""

    method: str
    weights: str
    domains: list[str]
    cells: dict[str, dict[str, dict[str, float]]]
    metrics: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    def pairs(self) -> list[tuple[str, str]]:
        return [(q, g) for q in self.domains for g in self.domains if q != g and g in self.cells.get(q, {})]

    def row_average(self, query: str, metric: str) -> float:
        """The paper's "Avg." column: mean over the gallery domains of one query domain."""
        vals = [v[metric] for g, v in self.cells.get(query, {}).items() if g != query]
        return float(np.mean(vals)) if vals else float("nan")

    def average(self, metric: str) -> float:
        """Mean over all (query, gallery) pairs."""
        vals = [self.cells[q][g][metric] for q, g in self.pairs()]
        return float(np.mean(vals)) if vals else float("nan")

    @property
    def meaningful(self) -> bool:
        return RANDOM_INIT not in self.weights

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "weights": self.weights,
            "numbers_meaningful": self.meaningful,
            "domains": self.domains,
            "metrics": self.metrics,
            "cells": self.cells,
            "row_averages": {q: {m: self.row_average(q, m) for m in self.metrics} for q in self.domains},
            "average": {m: self.average(m) for m in self.metrics},
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AccuracyTable":
        return cls(d["method"], d["weights"], list(d["domains"]), d["cells"], list(d["metrics"]), dict(d.get("info", {})))


def embed_dataset(
    dataset: DomainDataset,
    embed_fn: EmbedFn,
    *,
    batch_size: int = 64,
    progress: bool = True,
    desc: str = "embed",
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{domain: (embeddings [N, D] float32, labels [N])}`` for every domain, in the dataset's order.

    ``embed_fn`` gets lists of at most ``batch_size`` path strings and must return one row
    per path; rows must be finite.
    """
    from tqdm.auto import tqdm

    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    bar = tqdm(total=len(dataset), desc=desc, unit="img", disable=not progress, leave=False)
    for domain in dataset.domains:
        paths = [str(p) for p in dataset.paths(domain)]
        chunks = []
        for start in range(0, len(paths), batch_size):
            batch = paths[start : start + batch_size]
            e = np.asarray(embed_fn(batch), dtype=np.float32)
            if e.ndim != 2 or e.shape[0] != len(batch):
                raise ValueError(f"embedding function returned shape {e.shape} for {len(batch)} images of {domain}")
            if not np.isfinite(e).all():
                raise ValueError(f"embedding function returned NaN/inf for images of {domain} (first: {batch[0]})")
            chunks.append(e)
            bar.update(len(batch))
        emb = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
        out[domain] = (emb, dataset.labels(domain))
    bar.close()
    return out


def cross_domain_table(
    embeddings: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    method: str,
    weights: str,
    ks: Sequence[int] = (200,),
    pairs: Sequence[tuple[str, str]] | None = None,
    chunk: int | None = None,
    full_map: bool = True,
    info: Mapping[str, Any] | None = None,
) -> AccuracyTable:
    """The paper's table for one method from per-domain ``(embeddings, labels)``.

    ``pairs`` defaults to every ordered pair of distinct domains (:func:`cross_domain_pairs`).
    ``full_map=False`` skips the whole-gallery mAP (which sorts every gallery row) and keeps
    only mAP@k / Prec@k (top-k partial sorts): the choice for DomainNet-sized galleries.
    """
    domains = list(embeddings)
    pairs = list(pairs) if pairs is not None else cross_domain_pairs(domains)
    metrics = _metric_names(ks, full_map)
    cells: dict[str, dict[str, dict[str, float]]] = {}
    for q, g in pairs:
        qe, ql = embeddings[q]
        ge, gl = embeddings[g]
        res = retrieval_metrics(qe, ql, ge, gl, ks=ks, chunk=chunk, full_map=full_map, exclude_self=(q == g))
        cells.setdefault(q, {})[g] = {m: res[m] for m in metrics}
    full_info = {"images": {d: int(len(embeddings[d][1])) for d in domains}, **dict(info or {})}
    return AccuracyTable(method, weights, domains, cells, metrics, full_info)


def _pct(v: float) -> str:
    return "-" if v is None or not np.isfinite(v) else f"{100 * v:.2f}"


def render_paper_table(
    tables: Sequence[AccuracyTable],
    metrics: Sequence[str] | None = None,
    domains: Sequence[str] | None = None,
) -> str:
    """The paper's layout (its Table 2): rows = (method, query domain), columns = gallery domain x metric,
    then "Avg." over the row's gallery domains; values in percent, 2 decimals; "-" on the diagonal.
    A last block gives each method's average over all pairs. Weights are listed under the table.
    """
    if not tables:
        raise ValueError("no tables to render")
    metrics = list(metrics or tables[0].metrics)
    domains = list(domains or tables[0].domains)
    headers = ["Method", "Query"] + [f"{g} {m}" for g in domains for m in metrics] + [f"Avg. {m}" for m in metrics]
    rows = []
    for q in domains:
        for t in tables:
            if q not in t.cells:
                continue
            cells = [_pct(t.cells[q][g][m]) if g in t.cells[q] and g != q else "-" for g in domains for m in metrics]
            rows.append([t.method, q] + cells + [_pct(t.row_average(q, m)) for m in metrics])
    for t in tables:
        rows.append([t.method, "all pairs"] + ["" for _ in domains for _ in metrics] + [_pct(t.average(m)) for m in metrics])
    align = ["l", "l"] + ["r"] * (len(headers) - 2)
    notes = "\n".join(f"- {t.method}: {t.weights}" for t in tables)
    return markdown_table(headers, rows, align=align) + "\n\nResults in %. Weights:\n" + notes


def render_comparison(
    tables: Sequence[AccuracyTable], reference: int = 0, metrics: Sequence[str] | None = None
) -> str:
    """Methods side by side: average over all pairs of each metric (%), and the change against
    ``tables[reference]`` in percentage points (e.g. what each exported artifact loses against
    torch, or what TKI gains over vanilla CLIP), plus the largest per-pair change of the first metric.
    """
    if not tables:
        raise ValueError("no tables to compare")
    metrics = list(metrics or tables[0].metrics)
    ref = tables[reference]
    m0 = metrics[0]
    headers = ["Method"] + [f"{m} %" for m in metrics] + [f"Δ {m} (pp)" for m in metrics] + [f"max pair Δ {m0} (pp)", "weights"]
    rows = []
    for t in tables:
        deltas = [("" if t is ref else f"{100 * (t.average(m) - ref.average(m)):+.2f}") for m in metrics]
        pair_d = [abs(t.cells[q][g][m0] - ref.cells[q][g][m0]) for q, g in t.pairs()
                  if q in ref.cells and g in ref.cells[q] and m0 in t.metrics and m0 in ref.metrics]
        worst = "" if t is ref or not pair_d else f"{100 * max(pair_d):.2f}"
        rows.append([t.method] + [_pct(t.average(m)) for m in metrics] + deltas + [worst, t.weights])
    align = ["l"] + ["r"] * (2 * len(metrics) + 1) + ["l"]
    return f"Reference for Δ: {ref.method}\n\n" + markdown_table(headers, rows, align=align)


# -- embedding-function adapters ----------------------------------------------------------------

def torch_embed_fn(model: Any, device: str = "cpu") -> EmbedFn:
    """Wrap a torch ``TKIModel``: paths -> runtime ``Preprocessor`` (open_clip-exact) -> ``encode_image``."""
    import torch

    from tki_sdk.runtime.metadata import PreprocessConfig
    from tki_sdk.runtime.preprocess import Preprocessor

    pre = Preprocessor(PreprocessConfig.from_dict(dict(model.clip.preprocess_cfg)))
    model = model.to(device).eval()

    def fn(paths: list[str]) -> np.ndarray:
        x = torch.from_numpy(pre.batch(paths)).to(device)
        with torch.inference_mode():
            return model.encode_image(x).float().cpu().numpy()

    return fn


def embedder_embed_fn(embedder: Any, batch_size: int = 64) -> EmbedFn:
    """Wrap a runtime ``Embedder``: ``embed_images(paths, batch_size=...)`` must embed every path.

    Accepts an ``EmbedResult`` (``embeddings``, ``indices``, ``errors``) or a plain array; a file
    the runtime could not embed is an error here (a retrieval table over a different image set
    would not be comparable between methods).
    """

    def fn(paths: list[str]) -> np.ndarray:
        res = embedder.embed_images(paths, batch_size=batch_size)
        if isinstance(res, np.ndarray):
            arr, idx, errors = res, None, []
        else:
            arr = np.asarray(res.embeddings)
            idx = getattr(res, "indices", None)
            errors = list(getattr(res, "errors", []) or [])
        if errors:
            item, reason = errors[0]
            raise ValueError(f"the runtime could not embed {len(errors)} of {len(paths)} files (first: {item}: {reason})")
        if arr.shape[0] != len(paths):
            raise ValueError(f"Embedder returned {arr.shape[0]} rows for {len(paths)} files")
        if idx is not None and not np.array_equal(np.asarray(idx), np.arange(len(paths))):
            out = np.empty_like(arr)
            out[np.asarray(idx)] = arr
            arr = out
        return arr

    return fn


# -- suite ------------------------------------------------------------------------------------

QUICK_PER_CLASS = 8
QUICK_VANILLA = "TKI-Tiny-ViT"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``tki-bench accuracy``."""
    g = parser.add_argument_group("accuracy")
    g.add_argument("--dataset-dir", type=Path, default=None,
                   help="<root>/<domain>/<class>/<image> (or <root>/images/...); default $TKI_PACS_DIR, else ../shared/data/pacs/images beside the repository")
    g.add_argument("--model-dir", type=Path, action="append", default=None,
                   help="tki-export folder (repeatable); every precision in --precision is measured via the runtime Embedder")
    g.add_argument("--precision", default=None, help="artifacts of each --model-dir to measure, e.g. fp32,int8 (default: all in tki.json)")
    g.add_argument("--checkpoint", type=Path, default=None, help="tki train folder: torch TKIModel (reference for exported artifacts)")
    g.add_argument("--vanilla", default=None, metavar="MODEL",
                   help=f"also measure vanilla CLIP (head none) of this open_clip model (--quick default: {QUICK_VANILLA} if no model is given)")
    g.add_argument("--pretrained", default=None, help="CLIP weights for --vanilla / --checkpoint (open_clip tag or local file)")
    g.add_argument("--per-class", type=int, default=None, help=f"images per (domain, class), seeded sample (default all; --quick {QUICK_PER_CLASS})")
    g.add_argument("--domains", default=None, help="comma-separated subset of domains (default all)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    g.add_argument("--batch-size", type=int, default=64, help="images per embedding call (default 64)")
    g.add_argument("--k", type=int, default=200, help="k of mAP@k and Prec@k (default 200, the paper's)")
    g.add_argument("--no-full-map", action="store_true",
                   help="skip whole-gallery mAP (sorts every gallery row); keep mAP@k / Prec@k -- for DomainNet-sized galleries")
    g.add_argument("--device", default="cpu", help="torch device for --checkpoint / --vanilla (default cpu)")


def _embedder_methods(model_dir: Path, precisions: list[str] | None, batch_size: int) -> list[tuple[str, str, EmbedFn, dict[str, Any]]]:
    from tki_sdk.common.cli import UsageError

    from tki_sdk.runtime import Embedder
    from tki_sdk.runtime.metadata import ModelMetadata

    try:
        meta = ModelMetadata.load(model_dir)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None
    avail = list(meta.artifacts) or [meta.default_precision]
    wanted = precisions or avail
    unknown = [p for p in wanted if p not in avail]
    if unknown:
        raise UsageError(f"{model_dir} has no {unknown} artifact(s); it holds {avail}")
    weights = describe_weights(meta.weights, meta.checkpoint)
    out = []
    for p in wanted:
        try:
            emb = Embedder(model_dir, precision=p)
        except (ValueError, FileNotFoundError, ImportError, RuntimeError) as e:
            raise UsageError(f"{model_dir} ({p}): {e}") from None
        art = meta.artifacts.get(p, {})
        info = {"source": "runtime", "model_dir": str(model_dir), "precision": p, "head": meta.head,
                "artifact": {"file": art.get("file"), "sha256": art.get("sha256")},
                "backend": getattr(emb, "backend", None)}
        label = f"{model_dir.name}:{p}" + ("" if meta.head == "tki" else f" ({meta.head})")
        out.append((label, weights, embedder_embed_fn(emb, batch_size), info))
    return out


def _torch_methods(args: argparse.Namespace) -> list[tuple[str, str, EmbedFn, dict[str, Any]]]:
    from tki_sdk.common.cli import UsageError

    out = []
    vanilla = args.vanilla
    if args.quick and vanilla is None and args.checkpoint is None and not args.model_dir:
        vanilla = QUICK_VANILLA
    if vanilla is None and args.checkpoint is None:
        return out
    try:
        from tki_sdk.model import TKIModel
    except ImportError as e:
        raise UsageError(f"--vanilla / --checkpoint need the training extra ({e}); pip install 'tki-sdk[train]'") from None
    try:
        if vanilla is not None:
            m = TKIModel.vanilla(vanilla, args.pretrained, device=args.device)
            out.append((f"vanilla CLIP {vanilla} (torch)", describe_weights(m.clip.weights), torch_embed_fn(m, args.device),
                        {"source": "torch", "head": "none", "model_name": vanilla}))
        if args.checkpoint is not None:
            m = TKIModel.from_checkpoint(args.checkpoint, args.pretrained, device=args.device)
            out.append((f"TKI {args.checkpoint.name} (torch)", describe_weights(m.clip.weights, m.checkpoint),
                        torch_embed_fn(m, args.device),
                        {"source": "torch", "head": "tki", "checkpoint": m.checkpoint}))
    except (FileNotFoundError, ValueError) as e:  # ClipLoadError / CheckpointError are ValueErrors
        raise UsageError(str(e).splitlines()[0]) from None
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """``tki-bench accuracy``: see the module docstring."""
    from tki_sdk.common.cli import UsageError
    from .plots import plot_grouped_bars

    root = dataset_dir(args.dataset_dir, required_by="accuracy")
    try:
        ds = DomainDataset(root, domains=args.domains.split(",") if args.domains else None)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None
    if len(ds.domains) < 2:
        raise UsageError(f"{root} has {len(ds.domains)} domain(s); cross-domain retrieval needs at least 2")
    per_class = args.per_class if args.per_class is not None else (QUICK_PER_CLASS if args.quick else None)
    if per_class is not None and per_class < 1:
        raise UsageError("--per-class must be >= 1")
    if args.batch_size < 1 or args.k < 1:
        raise UsageError("--batch-size and --k must be >= 1")
    ds = ds.sample(per_class, seed=args.seed)
    precisions = [p.strip() for p in args.precision.split(",")] if args.precision else None

    methods = _torch_methods(args)
    for md in args.model_dir or []:
        methods += _embedder_methods(md, precisions, args.batch_size)
    if not methods:
        raise UsageError("accuracy needs a model: --model-dir DIR (tki-export output), --checkpoint CKPT or --vanilla MODEL")

    progress = not getattr(args, "no_progress", False)
    tables = []
    for label, weights, fn, info in methods:
        embs = embed_dataset(ds, fn, batch_size=args.batch_size, progress=progress, desc=label)
        tables.append(cross_domain_table(embs, method=label, weights=weights, ks=(args.k,),
                                         full_map=not args.no_full_map, info=info))

    # Reference for the comparison: the torch TKI model if present (exported artifacts vs torch), else the first.
    ref = next((i for i, (_, _, _, info) in enumerate(methods) if info.get("source") == "torch" and info.get("head") == "tki"), 0)
    metrics = _metric_names((args.k,), not args.no_full_map)
    paper_md = render_paper_table(tables, metrics)
    cmp_md = render_comparison(tables, ref, metrics)
    warn = "" if all(t.meaningful for t in tables) else "\n\nWARNING: random-init CLIP weights: these numbers carry no meaning."
    name = getattr(args, "name", None) or ("quick" if args.quick else f"{Path(root).name}_{per_class or 'all'}")
    pair_labels = [f"{q}->{g}" for q, g in tables[0].pairs()]
    png = plot_grouped_bars(pair_labels, {t.method: [100 * t.cells[q][g][f"mAP@{args.k}"] for q, g in t.pairs()] for t in tables},
                            Path(args.suite_dir) / f"{name}.png", ylabel=f"mAP@{args.k} (%)",
                            title=f"cross-domain retrieval, {Path(root).name}, {per_class or 'all'} per class"
                            + ("" if all(t.meaningful for t in tables) else f" ({RANDOM_INIT})"))
    return {
        "name": name,
        "dataset": {"root": str(ds.root), "domains": ds.domains, "classes": ds.classes, "per_class": per_class,
                    "seed": args.seed, "images": ds.counts()},
        "k": args.k,
        "reference": tables[ref].method,
        "tables": [t.to_dict() for t in tables],
        "plots": [str(png)],
        "markdown": paper_md + "\n\n" + cmp_md + warn,
    }
