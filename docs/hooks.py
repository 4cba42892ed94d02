"""mkdocs hooks: pages that are generated, never hand-copied, so they cannot drift.

- ``<!-- tki:help PROG [ARGS] -->``: the ``--help`` text of a console script, run from this checkout.
- ``<!-- tki:results -->``: one row per committed result file (``benchmarks/results/**.json``) with the
  machine it ran on (CPU model, cores visible, ISA flags, load average) and its command; figures are read from
  the files, never typed.
- ``<!-- tki:results-table SUITE/NAME.json -->``: the headline rows of one result file, with its machine.
- ``<!-- tki:search-table search/NAME.json -->``: a search suite result at its target recall: per index the
  QPS, the ratios to FAISS HNSW and to exact search, build rate and memory, with the machine.

The README is not built by mkdocs: a ``<!-- tki:search-table ... -->`` line there is followed by the table and
closed by ``<!-- /tki:search-table -->``; ``python docs/hooks.py`` rewrites those blocks from the files, and
``tests/test_docs_figures.py`` fails when a block differs from what the file gives.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
_HELP = re.compile(r"<!-- tki:help ([^>]+?) -->")
_TABLE = re.compile(r"<!-- tki:results-table ([^>]+?) -->")
_SEARCH = re.compile(r"<!-- tki:search-table ([^>]+?) -->")
#: A generated block of the README: the marker line, the table, the closing line.
README_BLOCK = re.compile(r"(<!-- tki:search-table ([^>]+?) -->\n)(.*?)(<!-- /tki:search-table -->)", re.S)

#: console script -> module run with ``python -m`` (the same entry points pyproject.toml installs).
_SCRIPTS = {"tki": "tki_sdk.cli.main", "tki-export": "tki_sdk.cli.export", "tki-bench": "tki_sdk.cli.bench"}


def _help(command: str) -> str:
    prog, *args = command.split()
    env_path = str(REPO / "src")
    proc = subprocess.run([sys.executable, "-m", _SCRIPTS[prog], *args, "--help"], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env={"PYTHONPATH": env_path, "COLUMNS": "100", "PATH": "/usr/bin:/bin"})
    if proc.returncode != 0:
        raise RuntimeError(f"{command} --help failed: {proc.stderr.strip()[-500:]}")
    return f"```text\n$ {command} --help\n{proc.stdout.rstrip()}\n```"


def machine_line(m: dict[str, Any]) -> str:
    """CPU model, cores visible to the process, ISA flags, load average: what a figure needs beside it."""
    cpu = m.get("cpu") or {}
    flags = cpu.get("flags")
    isa = ", ".join(flags) if flags else "ISA not recorded"
    if cpu.get("vnni") is not None:
        isa += ", VNNI" if cpu["vnni"] else ", no VNNI"
    load = m.get("load_average_1_5_15min")
    load_s = "/".join(f"{x:g}" for x in load) if load else "not recorded"
    host = f"; kernel {m['platform'].split('-')[1]}" if m.get("platform") else ""
    return (f"{m.get('cpu_model', '?')}, {m.get('usable_cpus', m.get('cpu_count', '?'))} cores visible, "
            f"{isa}, load {load_s}{host}")


def _catalogue() -> str:
    rows = ["| file | suite | when | machine | command | plot |", "|---|---|---|---|---|---|"]
    for f in sorted(RESULTS.rglob("*.json")):
        try:
            d = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(d, dict) or "machine" not in d:
            continue
        rel = f.relative_to(REPO)
        pngs = sorted(f.parent.glob(f.stem + "*.png"))
        plot = ", ".join(p.name for p in pngs) or "-"
        cmd = str(d.get("command", "")).replace("|", "\\|")
        rows.append(f"| `{rel}` | {d.get('suite', '?')} | {str(d.get('timestamp', '?'))[:16]} | "
                    f"{machine_line(d['machine'])} | `{cmd[:160]}` | {plot} |")
    return "\n".join(rows)


def _flat(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out[prefix] = value


def _table(name: str) -> str:
    d = json.loads((RESULTS / name).read_text())
    res = d.get("results", {})
    lines = [f"From `benchmarks/results/{name}` ({machine_line(d['machine'])}; {str(d.get('timestamp'))[:16]}):", ""]
    rows = res.get("rows") if isinstance(res, dict) else None
    if isinstance(rows, list) and rows and isinstance(rows[0], dict):
        cols = [c for c in rows[0] if isinstance(rows[0][c], (str, int, float)) and not isinstance(rows[0][c], bool)][:9]
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in rows[:40]:
            lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
        return "\n".join(lines)
    flat: dict[str, Any] = {}
    _flat("", res, flat)
    lines += ["| figure | value |", "|---|---:|"]
    for k, v in list(flat.items())[:40]:
        lines.append(f"| `{k}` | {_fmt(v)} |")
    return "\n".join(lines)


def search_table(name: str) -> str:
    """One search suite result at its target recall (interpolated on each index's Pareto frontier), per run:
    index, QPS, x FAISS HNSW, x exact, max recall, build vectors/s, memory MiB; then the machine line."""
    d = json.loads((RESULTS / name).read_text())
    res = d.get("results", {})
    out = []
    for run in res.get("runs", []):
        target = (res.get("target") or {}).get("recall_at_10")
        out.append(f"{run['label']} x {run['dim']}, {run['threads']} thread{'' if run['threads'] == 1 else 's'}, recall@{run['k']}"
                   + (f" = {target}" if target is not None else "") + ":")
        out += ["", "| index | QPS | x FAISS HNSW | x exact | max recall | build vectors/s | memory MiB |",
                "|---|---:|---:|---:|---:|---:|---:|"]
        for a in run.get("at_target", []):
            out.append(f"| {a['index']} | {_fmt(a['qps'])} | {_fmt(a['vs_faiss_hnsw'])} | {_fmt(a['vs_exact'])} | "
                       f"{_fmt(a['max_recall'])} | {_fmt(a['build_rate'])} | {_fmt(a['memory_bytes'] / 2**20)} |")
        out.append("")
    out.append(f"From `benchmarks/results/{name}` ({machine_line(d['machine'])}; {str(d.get('timestamp'))[:16]}).")
    return "\n".join(out)


def refresh_readme(text: str) -> str:
    """``text`` with every README search-table block regenerated from its file."""
    return README_BLOCK.sub(lambda m: m.group(1) + search_table(m.group(2).strip()) + "\n" + m.group(4), text)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    markdown = _HELP.sub(lambda m: _help(m.group(1).strip()), markdown)
    markdown = _TABLE.sub(lambda m: _table(m.group(1).strip()), markdown)
    markdown = _SEARCH.sub(lambda m: search_table(m.group(1).strip()), markdown)
    return markdown.replace("<!-- tki:results -->", _catalogue())


if __name__ == "__main__":  # python docs/hooks.py: rewrite the README's generated blocks
    readme = REPO / "README.md"
    readme.write_text(refresh_readme(readme.read_text()))
