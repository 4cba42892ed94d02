"""Accuracy suite: the paper's cross-domain retrieval tables (every mAP convention, Prec@200).

Protocol (the paper's): for every ordered pair of distinct domains ``(q, g)``, every image
of domain ``q`` is a query against the gallery of all images of domain ``g``; a gallery
image is relevant when its class equals the query's; images are ranked by cosine
similarity of their embeddings. Per pair: mAP (whole gallery), mAP@200 and Prec@200 as
defined in :mod:`tki_sdk.benchmarks.metrics`; per query domain: the average over its
gallery domains (the paper's "Avg." column); overall: the average over all pairs. Every mAP
convention is computed on every run (whole-gallery mAP, mAP@200 by hits, mAP@200:min over min(200, R);
:data:`~tki_sdk.benchmarks.metrics.MAP_CONVENTIONS`).

Embeddings come from any *embedding function*: a callable taking a list of image paths
and returning an ``[N, D]`` array (one row per path). Adapters here wrap a torch
``TKIModel`` (trained head or vanilla CLIP) and the torch-free runtime ``Embedder``, so
vanilla CLIP, TKI and every exported artifact are measured the same way and can be
compared side by side (with the mAP each artifact loses against torch).

Every table names the weights it ran on: the CLIP weights file and SHA-256 (or tag), or
"random init: numbers carry no meaning" -- an accuracy figure without real CLIP weights
says nothing about the method.

The retrieval metric is measured, not assumed: a method whose embeddings are raw ball points
(a ``--checkpoint``, or an export made with ``tki-export --embedding ball``) is scored on the
same embeddings by cosine, inner product and Poincaré distance (``--metrics``), and the
payload's ``metric_choice`` names the best by mAP@k (on random weights that pick means nothing).

The shipped path is in the loop: every exact table is also scored through a built
:class:`~tki_sdk.runtime.index.gallery.Gallery` (HNSW, ``--gallery f16,i8``; Poincaré galleries
re-rank their HNSW candidates exactly) and the gap to exact search is reported (mAP@k and
Prec@k, which need only the top k).

Text-to-image, in the same protocol (:func:`text_table`): each class name is one query (class ``i`` is
relevant to query ``i``), each domain a gallery; mAP@k, Prec@k and whole-gallery mAP per gallery domain,
for each way a query becomes text (:data:`TEXT_QUERIES`: the name as typed, CLIP's template
``"a photo of a {}."``, and TKI's ensemble over the learned domain prompts), for every method that can
embed text (an export with a text artifact through ``Embedder.embed_texts``; a torch ``TKIModel`` through
``encode_text``, raw and template only).
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tki_sdk.benchmarks.datasets import DomainDataset, cross_domain_pairs, dataset_dir
from tki_sdk.benchmarks.metrics import (
    ap_from_relevance,
    precision_from_relevance,
    retrieval_metrics,
)
from tki_sdk.benchmarks.results import markdown_table
from tki_sdk.common.errors import UsageError
from tki_sdk.common.model_metadata import ModelMetadata, PreprocessConfig
from tki_sdk.common.progress import progress_bar
from tki_sdk.benchmarks.options import SuiteOptions

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
    "TextFn",
    "TEXT_QUERIES",
    "class_queries",
    "text_table",
    "render_text_table",
    "run",
]

EmbedFn = Callable[[list[str]], np.ndarray]
#: ``(texts, query construction) -> [N, D]``: embeds texts in a method's image space.
TextFn = Callable[[list[str], str], np.ndarray]
#: The query constructions of the text rows (``tki_sdk.runtime.engine.text_encoder``).
TEXT_QUERIES = ("raw", "template", "ensemble")
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
    return (["mAP"] if full_map else []) + [f"mAP@{k}" for k in ks] + [f"mAP@{k}:min" for k in ks] \
        + [f"Prec@{k}" for k in ks]


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
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    bar = progress_bar(len(dataset), desc, unit="img", enabled=bool(progress), leave=False)
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
    metric: str = "cos",
    curvature: float | None = None,
) -> AccuracyTable:
    """The paper's table for one method from per-domain ``(embeddings, labels)``.

    ``pairs`` defaults to every ordered pair of distinct domains (:func:`cross_domain_pairs`).
    ``full_map=False`` skips the whole-gallery mAP (which sorts every gallery row) and keeps
    only mAP@k / Prec@k (top-k partial sorts): the choice for DomainNet-sized galleries.
    ``metric`` / ``curvature``: how embeddings are compared (:func:`~.metrics.retrieval_metrics`).
    """
    domains = list(embeddings)
    pairs = list(pairs) if pairs is not None else cross_domain_pairs(domains)
    metrics = _metric_names(ks, full_map)
    cells: dict[str, dict[str, dict[str, float]]] = {}
    for q, g in pairs:
        qe, ql = embeddings[q]
        ge, gl = embeddings[g]
        res = retrieval_metrics(qe, ql, ge, gl, ks=ks, chunk=chunk, full_map=full_map, exclude_self=(q == g),
                                metric=metric, curvature=curvature)
        cells.setdefault(q, {})[g] = {m: res[m] for m in metrics}
    full_info = {"images": {d: int(len(embeddings[d][1])) for d in domains}, **dict(info or {}), "metric": metric}
    return AccuracyTable(method, weights, domains, cells, metrics, full_info)


def gallery_table(
    embeddings: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    method: str,
    weights: str,
    dtype: str,
    k: int = 200,
    metric: str = "cos",
    curvature: float | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    info: Mapping[str, Any] | None = None,
) -> AccuracyTable:
    """The table through the shipped search path: per gallery domain a HNSW :class:`Gallery` (``dtype`` f32 /
    f16 / i8, ``metric``; default HNSW settings, i8 and poincare re-ranked as the Gallery does by default),
    searched for the top ``k`` of every query; mAP@k and Prec@k from the returned ranking (a padded slot is
    not relevant). The gap to :func:`cross_domain_table` on the same embeddings is what the index costs."""
    from tki_sdk.runtime.index.gallery import MISSING_KEY, Gallery


    domains = list(embeddings)
    pairs = list(pairs) if pairs is not None else cross_domain_pairs(domains)
    built: dict[str, Any] = {}
    cells: dict[str, dict[str, dict[str, float]]] = {}
    for q, g in pairs:
        ge, gl = embeddings[g]
        if g not in built:
            gal = Gallery(ge.shape[1], metric=metric, dtype=dtype, curvature=curvature)
            gal.add(np.arange(len(gl), dtype=np.uint64), ge)
            built[g] = gal
        qe, ql = embeddings[q]
        keys, _ = built[g].search(qe, k)
        valid = keys != MISSING_KEY
        idx = np.where(valid, keys, 0).astype(np.int64)
        rel = valid & (np.asarray(gl)[idx] == np.asarray(ql)[:, None])
        cells.setdefault(q, {})[g] = {f"mAP@{k}": float(ap_from_relevance(rel).mean()),
                                      f"Prec@{k}": float(precision_from_relevance(rel, k).mean())}
    full_info = {"images": {d: int(len(embeddings[d][1])) for d in domains}, **dict(info or {}),
                 "metric": metric, "search": f"Gallery HNSW {dtype}"}
    return AccuracyTable(method, weights, domains, cells, [f"mAP@{k}", f"Prec@{k}"], full_info)


def class_queries(classes: Sequence[str]) -> list[str]:
    """The text query of each class: its folder name with ``_`` as a space (DomainNet's
    ``The_Eiffel_Tower`` -> ``The Eiffel Tower``)."""
    return [c.replace("_", " ").strip() for c in classes]


def text_table(
    text_emb: np.ndarray,
    embeddings: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    method: str,
    weights: str,
    query: str,
    ks: Sequence[int] = (200,),
    full_map: bool = True,
    info: Mapping[str, Any] | None = None,
    metric: str = "cos",
    curvature: float | None = None,
) -> AccuracyTable:
    """Text-to-image in the paper's protocol: row ``i`` of ``text_emb`` (the text of class ``i``) is a query
    whose relevant images are those labelled ``i``, searched in each domain's gallery; per gallery domain
    the metrics of :func:`~.metrics.retrieval_metrics` (same ``metric`` / ``curvature`` as the images).
    The table's one query domain is ``"text"`` (its "Avg." is over the gallery domains)."""
    text_emb = np.asarray(text_emb, dtype=np.float32)
    if text_emb.ndim != 2 or not np.isfinite(text_emb).all():
        raise ValueError(f"text embeddings of shape {text_emb.shape} are not a finite [C, D] array")
    metrics = _metric_names(ks, full_map)
    labels = np.arange(text_emb.shape[0], dtype=np.int64)
    cells: dict[str, dict[str, dict[str, float]]] = {"text": {}}
    for g, (ge, gl) in embeddings.items():
        res = retrieval_metrics(text_emb, labels, ge, gl, ks=ks, full_map=full_map, metric=metric,
                                curvature=curvature)
        cells["text"][g] = {m: res[m] for m in metrics}
    full_info = {"queries": int(text_emb.shape[0]), "query_construction": query, **dict(info or {}),
                 "metric": metric}
    return AccuracyTable(method, weights, ["text", *embeddings], cells, metrics, full_info)


def render_text_table(tables: Sequence[AccuracyTable], metrics: Sequence[str]) -> str:
    """Rows = (method, query construction), columns = gallery domain x metric, then the average over the
    gallery domains; in percent."""
    galleries = [g for g in tables[0].domains if g != "text"]
    headers = ["Method", "Query"] + [f"{g} {m}" for g in galleries for m in metrics] + [f"Avg. {m}" for m in metrics]
    rows = [[t.method, str(t.info.get("query_construction"))]
            + [_pct(t.cells["text"][g][m]) for g in galleries for m in metrics]
            + [_pct(t.row_average("text", m)) for m in metrics] for t in tables]
    align = ["l", "l"] + ["r"] * (len(headers) - 2)
    return "Text to image (each class name a query, each domain a gallery):\n\n" + markdown_table(
        headers, rows, align=align)


def render_gallery_gap(pairs_of_tables: Sequence[tuple[AccuracyTable, AccuracyTable]], k: int) -> str:
    """Exact vs shipped gallery, per (exact table, gallery table): mAP@k and Prec@k averages (%), the gap in
    percentage points, and the largest per-pair gap of mAP@k."""
    headers = ["Method", "search", f"mAP@{k} exact", f"mAP@{k} gallery", "Δ (pp)", f"Prec@{k} exact",
               f"Prec@{k} gallery", "Δ (pp)", f"max pair Δ mAP@{k} (pp)"]
    rows = []
    for exact, gal in pairs_of_tables:
        m, p = f"mAP@{k}", f"Prec@{k}"
        worst = max((abs(gal.cells[q][g][m] - exact.cells[q][g][m]) for q, g in gal.pairs()), default=float("nan"))
        rows.append([exact.method, gal.info.get("search", "gallery"), _pct(exact.average(m)), _pct(gal.average(m)),
                     f"{100 * (gal.average(m) - exact.average(m)):+.2f}", _pct(exact.average(p)), _pct(gal.average(p)),
                     f"{100 * (gal.average(p) - exact.average(p)):+.2f}", f"{100 * worst:.2f}"])
    return "Shipped search path (usearch HNSW Gallery) against exact search on the same embeddings\n\n" + \
        markdown_table(headers, rows, align=["l", "l"] + ["r"] * 7)


def metric_choice(tables: Sequence[AccuracyTable], by: str) -> dict[str, Any] | None:
    """Among exact tables of one method scored by several metrics (``info["metric_of"]`` names the method),
    the metric with the highest average ``by``; None when no method was scored by more than one metric."""
    groups: dict[str, dict[str, float]] = {}
    meaningful = True
    for t in tables:
        base = t.info.get("metric_of")
        if base is not None and by in t.metrics:
            groups.setdefault(base, {})[t.info["metric"]] = t.average(by)
            meaningful = meaningful and t.meaningful
    groups = {b: v for b, v in groups.items() if len(v) > 1}
    if not groups:
        return None
    out = {}
    for base, scores in groups.items():
        pick = max(scores, key=lambda m: scores[m])
        out[base] = {"by": by, "averages": scores, "pick": pick}
    note = ("" if meaningful else "random-init CLIP weights: this pick says nothing about which metric suits "
            "real weights")
    return {"methods": out, "numbers_meaningful": meaningful, "note": note}


#: Metrics each output space can be scored by (tki.json ``output_space``).
METRICS_FOR_SPACE = {"ball": ("cos", "ip", "poincare"), "euclidean": ("cos", "ip")}


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

    from tki_sdk.runtime.engine.preprocess import Preprocessor

    pre = Preprocessor(PreprocessConfig.from_dict(dict(model.clip.preprocess_cfg)))
    model = model.to(device).eval()

    def fn(paths: list[str]) -> np.ndarray:
        x = torch.from_numpy(pre.batch(paths)).to(device)
        with torch.inference_mode():
            return model.encode_image(x).float().cpu().numpy()

    return fn


def torch_text_fn(model: Any, device: str = "cpu") -> TextFn:
    """Wrap a torch ``TKIModel``'s ``encode_text``: ``"raw"`` or ``"template"`` (``"a photo of a {}."``);
    ``"ensemble"`` is a ``ValueError`` (the learned prompts are an export's, see ``Embedder.embed_texts``)."""
    import torch

    from tki_sdk.runtime.engine.text_encoder import DEFAULT_TEMPLATE

    def fn(texts: list[str], query: str) -> np.ndarray:
        if query not in ("raw", "template"):
            raise ValueError(f"torch text queries are raw or template, not {query!r}")
        filled = texts if query == "raw" else [DEFAULT_TEMPLATE.replace("{}", t) for t in texts]
        with torch.inference_mode():
            return model.encode_text(filled).float().cpu().numpy()

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


Method = tuple[str, str, EmbedFn, dict[str, Any], "TextFn | None"]


def _embed_texts(embedder: Any, texts: list[str], query: str) -> np.ndarray:
    """:data:`TextFn` of a runtime ``Embedder``: ``embed_texts`` with the query construction as template."""
    return embedder.embed_texts(texts, template=query)


def _embedder_methods(model_dir: Path, precisions: list[str] | None, batch_size: int) -> list[Method]:

    from tki_sdk.runtime import Embedder

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
                "output_space": meta.output_space, "curvature": meta.curvature,
                "artifact": {"file": art.get("file"), "sha256": art.get("sha256")},
                "backend": getattr(emb, "backend", None)}
        label = f"{model_dir.name}:{p}" + ("" if meta.head == "tki" else f" ({meta.head})")
        text = None
        if emb.has_text:
            info["text"] = {"default_query": emb.text_encoder.default_query}
            text = functools.partial(_embed_texts, emb)
        out.append((label, weights, embedder_embed_fn(emb, batch_size), info, text))
    return out


def _torch_methods(args: SuiteOptions) -> list[Method]:

    out = []
    vanilla = args.vanilla
    if args.quick and vanilla is None and args.checkpoint is None and not args.model_dir:
        vanilla = QUICK_VANILLA
    if vanilla is None and args.checkpoint is None:
        return out
    try:
        from tki_sdk.train.model import TKIModel
    except ImportError as e:
        raise UsageError(f"--vanilla / --checkpoint need the training extra ({e}); pip install 'tki-sdk[train]'") from None
    try:
        if vanilla is not None:
            m = TKIModel.vanilla(vanilla, args.pretrained, device=args.device)
            out.append((f"vanilla CLIP {vanilla} (torch)", describe_weights(m.clip.weights), torch_embed_fn(m, args.device),
                        {"source": "torch", "head": "none", "model_name": vanilla}, torch_text_fn(m, args.device)))
        if args.checkpoint is not None:
            m = TKIModel.from_checkpoint(args.checkpoint, args.pretrained, device=args.device)
            m.set_embedding("ball")  # raw head output: scored by each of --metrics on the same embeddings
            out.append((f"TKI {args.checkpoint.name} (torch)", describe_weights(m.clip.weights, m.checkpoint),
                        torch_embed_fn(m, args.device),
                        {"source": "torch", "head": "tki", "checkpoint": m.checkpoint, "output_space": m.output_space,
                         "curvature": m.head.config.curvature if m.head.hyperbolic else None},
                        torch_text_fn(m, args.device)))
    except (FileNotFoundError, ValueError) as e:  # ClipLoadError / CheckpointError are ValueErrors
        raise UsageError(str(e).splitlines()[0]) from None
    return out


def run(args: SuiteOptions) -> dict[str, Any]:
    """``tki-bench accuracy``: see the module docstring."""
    from tki_sdk.benchmarks.plots import plot_grouped_bars

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

    wanted_metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    bad = [m for m in wanted_metrics if m not in ("cos", "ip", "poincare")]
    if bad or not wanted_metrics:
        raise UsageError(f"--metrics: unknown {bad or args.metrics!r}; choose from cos, ip, poincare")
    dtypes = [] if args.gallery.strip() == "none" else [d.strip() for d in args.gallery.split(",") if d.strip()]
    if any(d not in ("f32", "f16", "i8") for d in dtypes):
        raise UsageError(f"--gallery {args.gallery!r}: choose from f32, f16, i8 (comma-separated) or none")

    progress = not getattr(args, "no_progress", False)
    text_queries = [] if args.text.strip() == "none" else [q.strip() for q in args.text.split(",") if q.strip()]
    if any(q not in TEXT_QUERIES for q in text_queries):
        raise UsageError(f"--text {args.text!r}: choose from {', '.join(TEXT_QUERIES)} (comma-separated) or none")
    queries = class_queries(ds.classes)
    tables, gallery_pairs, text_tables = [], [], []
    text_skipped: list[str] = []
    ref = 0
    for label, weights, fn, info, text_fn in methods:
        embs = embed_dataset(ds, fn, batch_size=args.batch_size, progress=progress, desc=label)
        texts: dict[str, np.ndarray] = {}
        for q in text_queries if text_fn is not None else []:
            try:
                texts[q] = np.asarray(text_fn(queries, q), dtype=np.float32)
            except ValueError as e:  # ensemble on vanilla CLIP or on torch: said, not silently dropped
                text_skipped.append(f"{label} {q}: {str(e).splitlines()[0]}")
        if text_fn is None and text_queries:
            text_skipped.append(f"{label}: no text artifact (exported with --no-text or before text search)")
        space_metrics = METRICS_FOR_SPACE.get(info.get("output_space", ""), ("cos",))
        scored = [m for m in space_metrics if m in wanted_metrics] or ["cos"]
        for metric in scored:
            many = len(space_metrics) > 1
            name = label if not many else f"{label} [{metric}]"
            minfo = {**info, **({"metric_of": label} if many else {})}
            curv = info.get("curvature") if metric == "poincare" else None
            if info.get("source") == "torch" and info.get("head") == "tki" and metric == "cos" and ref == 0:
                ref = len(tables)  # reference for the comparison: torch TKI by cosine (artifacts vs torch)
            t = cross_domain_table(embs, method=name, weights=weights, ks=(args.k,), full_map=not args.no_full_map,
                                   info=minfo, metric=metric, curvature=curv)
            tables.append(t)
            for dt in dtypes:
                gallery_pairs.append((t, gallery_table(embs, method=name, weights=weights, dtype=dt, k=args.k,
                                                       metric=metric, curvature=curv, info=minfo)))
            for q, temb in texts.items():
                text_tables.append(text_table(temb, embs, method=name, weights=weights, query=q, ks=(args.k,),
                                              full_map=not args.no_full_map, info=minfo, metric=metric,
                                              curvature=curv))
    metrics = _metric_names((args.k,), not args.no_full_map)
    paper_md = render_paper_table(tables, metrics)
    cmp_md = render_comparison(tables, ref, metrics)
    gap_md = render_gallery_gap(gallery_pairs, args.k) if gallery_pairs else ""
    text_md = render_text_table(text_tables, metrics) if text_tables else ""
    if text_skipped:
        text_md += ("\n\n" if text_md else "") + "No text rows for: " + "; ".join(text_skipped)
    choice = metric_choice(tables, f"mAP@{args.k}")
    choice_md = ""
    if choice:
        choice_md = "\n".join(
            f"Metric choice for {b}: {c['pick']} (average mAP@{args.k}: "
            + ", ".join(f"{m} {100 * v:.2f}%" for m, v in c["averages"].items()) + ")"
            for b, c in choice["methods"].items()) + (f"\n{choice['note']}" if choice["note"] else "")
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
        "gallery_tables": [g.to_dict() for _, g in gallery_pairs],
        "text": {"queries": queries, "tables": [t.to_dict() for t in text_tables], "skipped": text_skipped},
        "metric_choice": choice,
        "plots": [str(png)],
        "markdown": paper_md + "\n\n" + cmp_md + ("\n\n" + gap_md if gap_md else "")
        + ("\n\n" + text_md if text_md else "") + ("\n\n" + choice_md if choice_md else "") + warn,
    }
