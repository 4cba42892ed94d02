"""PNG plots for benchmark results (matplotlib, Agg backend: no display needed).

Input formats are plain lists of dicts (exactly what the suites store in their JSON), so
any suite can reuse these functions:

* :func:`plot_recall_qps` -- search: ``[{"dtype": "f32", "connectivity": 16,
  "expansion_search": 64, "recall": 0.995, "qps": 12345.0, "n": 100000}, ...]``
  plus optional ``exact_qps`` per size ``{n: qps}``.
* :func:`plot_throughput` -- ``[{"backend": "ort-int8", "batch_size": 32,
  "images_per_s": 410.5}, ...]``: one line per backend, img/s against batch size.
* :func:`plot_latency` -- ``[{"backend": "ort-int8", "batch_size": 1, "p50_ms": 4.1,
  "p95_ms": 4.8, "p99_ms": 5.3}, ...]``: grouped bars of latency percentiles per
  backend, one panel per batch size.
* :func:`plot_grouped_bars` -- ``categories [str]`` and ``{series name: [value per category]}``.

Every function writes one PNG and returns its path; parent folders are created.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tki_sdk.common.index_config import IndexConfig

__all__ = ["plot_pareto", "plot_recall_qps", "plot_throughput", "plot_latency", "plot_grouped_bars"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def plot_recall_qps(
    records: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    exact_qps: Mapping[Any, float] | None = None,
    target_recall: float = IndexConfig.target_recall,
    target_speedup: float = 50.0,
    k: int = 10,
    title: str = "usearch HNSW: recall vs queries/s",
) -> Path:
    """Recall@k (x) against QPS (y, log) for each (dtype, connectivity), one panel per size ``n``.

    ``records``: dicts with ``n``, ``dtype``, ``connectivity``, ``expansion_search``,
    ``recall`` (recall@k), ``qps``. ``exact_qps``: ``{n: exact-search QPS}``; when given, the
    exact QPS and ``target_speedup`` x exact are drawn as horizontal lines and the target
    recall as a vertical line, so the target region is the upper right.
    """
    plt = _plt()
    sizes = sorted({int(r["n"]) for r in records})
    if not sizes:
        raise ValueError("no search records to plot")
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.2 * len(sizes), 4.2), squeeze=False)
    for ax, n in zip(axes[0], sizes):
        groups: dict[tuple[str, int], list[Mapping[str, Any]]] = defaultdict(list)
        for r in records:
            if int(r["n"]) == n:
                groups[(str(r["dtype"]), int(r["connectivity"]))].append(r)
        for (dtype, conn), rs in sorted(groups.items()):
            rs = sorted(rs, key=lambda r: r["expansion_search"])
            ax.plot([r["recall"] for r in rs], [r["qps"] for r in rs], marker="o", ms=3.5,
                    label=f"{dtype} M={conn}")
        if exact_qps and (n in exact_qps or str(n) in exact_qps):
            e = float(exact_qps.get(n, exact_qps.get(str(n))))
            ax.axhline(e, color="grey", ls=":", lw=1, label="exact")
            ax.axhline(e * target_speedup, color="red", ls="--", lw=1, label=f"{target_speedup:g}x exact")
        ax.axvline(target_recall, color="red", ls="-.", lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel(f"recall@{k} vs exact")
        ax.set_ylabel("queries / s")
        ax.set_title(f"n = {n:,}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_throughput(
    records: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    title: str = "throughput vs batch size",
    value_key: str = "images_per_s",
    ylabel: str = "images / s",
) -> Path:
    """One line per ``backend``: ``value_key`` (default ``images_per_s``) against ``batch_size`` (log2 x)."""
    plt = _plt()
    if not records:
        raise ValueError("no throughput records to plot")
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in records:
        groups[str(r["backend"])].append(r)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for backend, rs in groups.items():
        rs = sorted(rs, key=lambda r: r["batch_size"])
        ax.plot([r["batch_size"] for r in rs], [r[value_key] for r in rs], marker="o", label=backend)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_latency(
    records: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    title: str = "latency percentiles",
    percentiles: Sequence[str] = ("p50_ms", "p95_ms", "p99_ms"),
) -> Path:
    """Grouped bars: for each ``batch_size`` panel, one group per ``backend``, one bar per percentile (ms)."""
    plt = _plt()
    if not records:
        raise ValueError("no latency records to plot")
    batches = sorted({int(r["batch_size"]) for r in records})
    fig, axes = plt.subplots(1, len(batches), figsize=(max(4.5, 3.6 * len(batches)), 4.0), squeeze=False)
    width = 0.8 / len(percentiles)
    for ax, b in zip(axes[0], batches):
        rs = [r for r in records if int(r["batch_size"]) == b]
        backends = list(dict.fromkeys(str(r["backend"]) for r in rs))
        for i, p in enumerate(percentiles):
            vals = [next((float(r[p]) for r in rs if str(r["backend"]) == be and p in r), 0.0) for be in backends]
            ax.bar([j + (i - (len(percentiles) - 1) / 2) * width for j in range(len(backends))], vals, width,
                   label=p.replace("_ms", ""))
        ax.set_xticks(range(len(backends)))
        ax.set_xticklabels(backends, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("ms per batch")
        ax.set_title(f"batch {b}", fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_grouped_bars(
    categories: Sequence[str],
    series: Mapping[str, Sequence[float]],
    path: str | Path,
    *,
    ylabel: str = "",
    title: str = "",
) -> Path:
    """Grouped bar chart: one group per category (x), one bar per series; ``series[name][i]`` belongs to ``categories[i]``.

    Used by the accuracy suite (categories = query->gallery pairs, series = methods) and
    usable for parity (categories = artifacts, series = statistics).
    """
    plt = _plt()
    if not categories or not series:
        raise ValueError("nothing to plot")
    for name, vals in series.items():
        if len(vals) != len(categories):
            raise ValueError(f"series {name!r} has {len(vals)} values for {len(categories)} categories")
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(categories) * max(1, len(series)) + 2), 4.2))
    for i, (name, vals) in enumerate(series.items()):
        ax.bar([j + (i - (len(series) - 1) / 2) * width for j in range(len(categories))], list(vals), width, label=name)
    ax.set_xticks(range(len(categories)))
    ax.set_xticklabels(list(categories), rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_pareto(
    panels: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | Path,
    *,
    exact_qps: Mapping[str, float] | None = None,
    target_recall: float = IndexConfig.target_recall,
    target_speedup: float = 20.0,
    k: int = 10,
    title: str = "recall vs queries/s",
) -> Path:
    """Recall@k (x) against QPS (y, log), one panel per data set, one curve per index.

    ``panels``: ``{panel title: [{"index": name, "points": [(recall, qps), ...]}, ...]}``. Each curve is drawn
    through all its points in the order of its sweep;
    ``exact_qps[panel]`` draws the exact baseline and ``target_speedup`` x it, and the target recall is a
    vertical line.
    """
    plt = _plt()
    if not panels:
        raise ValueError("nothing to plot")
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.8), squeeze=False)
    for ax, (name, curves) in zip(axes[0], panels.items()):
        for c in curves:
            pts = [(float(r), float(q)) for r, q in c["points"]]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, lw=1.2, label=c["index"])
        if exact_qps and name in exact_qps:
            e = float(exact_qps[name])
            ax.axhline(e, color="grey", ls=":", lw=1, label="exact (numpy BLAS)")
            ax.axhline(e * target_speedup, color="red", ls="--", lw=1, label=f"{target_speedup:g}x exact")
        ax.axvline(target_recall, color="red", ls="-.", lw=0.8)
        ax.set_yscale("log")
        lo = min(float(r) for c in curves for r, _ in c["points"])
        ax.set_xlim(max(lo, 0.5) - 0.01, 1.002)
        ax.set_xlabel(f"recall@{k} vs exact")
        ax.set_ylabel("queries / s")
        ax.set_title(name, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6.5)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
