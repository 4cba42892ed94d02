"""Benchmark result files: ``<out_dir>/<suite>/<name>.json`` with the machine and versions.

Every result file has this envelope (the suite's own payload goes under ``"results"``)::

    {
      "suite": "search", "name": "quick",
      "timestamp": "2025-01-01T12:00:00+00:00",
      "command": "tki-bench search --quick",
      "machine": {"cpu_model": "...", "cpu_count": 2, "usable_cpus": 2, "torch_threads": 2 | null,
                  "cpu": {vendor, model, ISA flags, cores, MHz, peak fp32 / int8 and how it was estimated},
                  "memory_gb": 23.4, "load_average_1_5_15min": [0.5, 0.4, 0.3], "gpus": [{"name": "...", "memory": "...", "driver": "..."}],
                  "platform": "Linux-...", "python": "3.11.x"},
      "versions": {"tki_sdk": "0.1.0", "numpy": "...", "torch": "..." | null, ...},
      "git": {"commit": "abc123..." | null, "dirty": true | false | null},
      "results": {...}
    }

Nothing here imports torch: ``torch_threads`` is read only when torch is already loaded
(a suite that runs torch imports it itself); otherwise it is ``null``.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tki_sdk.common.cpu import cpu_info, usable_cpus
from tki_sdk.common.versions import package_versions as installed

__all__ = [
    "machine_info",
    "package_versions",
    "git_info",
    "write_result",
    "load_result",
    "to_jsonable",
    "markdown_table",
    "format_number",
]

# distribution name -> key in "versions"
_DISTS = {
    "tki-sdk": "tki_sdk",
    "numpy": "numpy",
    "torch": "torch",
    "torchvision": "torchvision",
    "open_clip_torch": "open_clip",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "onnxruntime-gpu": "onnxruntime_gpu",
    "tensorrt": "tensorrt",
    "openvino": "openvino",
    "nncf": "nncf",
    "usearch": "usearch",
    "pillow": "pillow",
    "matplotlib": "matplotlib",
    "pyarrow": "pyarrow",
    "ray": "ray",
    "faiss-cpu": "faiss",
    "threadpoolctl": "threadpoolctl",
}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _gpus() -> list[dict[str, str]]:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=15, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3:
            gpus.append({"name": parts[0], "memory": parts[1], "driver": parts[2]})
    return gpus


def machine_info() -> dict[str, Any]:
    """CPU model, core counts, CPU facts and peak (:func:`tki_sdk.common.cpu.cpu_info`), torch threads (if torch
    is loaded), memory, GPUs (nvidia-smi), platform."""

    usable = usable_cpus()
    torch_threads = None
    if "torch" in sys.modules:
        try:
            torch_threads = int(sys.modules["torch"].get_num_threads())
        except Exception:  # pragma: no cover - partially imported torch
            torch_threads = None
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        load = None
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "cpu": cpu_info().to_dict(),
        "torch_threads": torch_threads,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "memory_gb": _memory_gb(),
        "load_average_1_5_15min": load,  # at write time; > usable_cpus means the timings shared the CPU
        "gpus": _gpus(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def package_versions() -> dict[str, str | None]:
    """Installed versions (``None`` when absent) of the packages the benchmarks may use."""

    found = installed(_DISTS)
    return {key: found.get(dist) for dist, key in _DISTS.items()}


def git_info(path: str | Path | None = None) -> dict[str, Any]:
    """Commit hash and dirty flag of the repository holding ``path`` (default: this package's source)."""
    cwd = Path(path) if path is not None else Path(__file__).resolve().parent
    if not shutil.which("git"):
        return {"commit": None, "dirty": None}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=20, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": bool(status.strip())}


def to_jsonable(obj: Any) -> Any:
    """numpy scalars/arrays, paths, tuples and sets -> plain JSON types; NaN/inf -> None."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


def write_result(
    out_dir: str | Path,
    suite: str,
    name: str,
    results: dict[str, Any],
    *,
    command: Sequence[str] | str | None = None,
) -> Path:
    """Write ``<out_dir>/<suite>/<name>.json`` (envelope in the module docstring) atomically; return the path."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"result name {name!r} must be a plain file stem")
    if command is None:
        command = [Path(sys.argv[0]).name, *sys.argv[1:]]
    if not isinstance(command, str):
        command = shlex.join(str(c) for c in command)
    doc = {
        "suite": suite,
        "name": name,
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": machine_info(),
        "versions": package_versions(),
        "git": git_info(),
        "results": results,
    }
    folder = Path(out_dir) / suite
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(to_jsonable(doc), indent=2, allow_nan=False) + "\n")
    tmp.replace(path)
    return path


def load_result(path: str | Path) -> dict[str, Any]:
    """Read a result file written by :func:`write_result`."""
    return json.loads(Path(path).read_text())


def format_number(v: Any, digits: int = 2) -> str:
    """Compact number formatting for tables: ints with thousands separators, floats to ``digits``."""
    if v is None:
        return "-"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        if not math.isfinite(float(v)):
            return "-"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}"
    return str(v)


def _numeric_text(s: str) -> bool:
    try:
        float(s.replace(",", "").rstrip("%x"))
        return True
    except ValueError:
        return False


def markdown_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    align: Sequence[str] | None = None,
    digits: int = 2,
) -> str:
    """A GitHub Markdown table. Cells that are not strings go through :func:`format_number`; ``|`` is escaped.

    ``align``: one of "l", "r", "c" per column (default: numbers right, text left, decided
    from the first row).
    """
    headers = [str(h).replace("|", "\\|") for h in headers]
    cells = [[(c if isinstance(c, str) else format_number(c, digits)).replace("|", "\\|") for c in row] for row in rows]
    for row in cells:
        if len(row) != len(headers):
            raise ValueError(f"row has {len(row)} cells for {len(headers)} headers: {row}")
    if align is None:
        first = rows[0] if rows else [""] * len(headers)
        align = ["r" if not isinstance(c, str) or _numeric_text(c) else "l" for c in first]
    sep = {"l": lambda w: ":" + "-" * (w - 1), "r": lambda w: "-" * (w - 1) + ":", "c": lambda w: ":" + "-" * (w - 2) + ":"}
    widths = [max([len(h)] + [len(r[i]) for r in cells] + [4]) for i, h in enumerate(headers)]

    def fmt(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(row, widths, align)) + " |"

    lines = [fmt(headers), "| " + " | ".join(sep[a](w) for a, w in zip(align, widths)) + " |"]
    lines += [fmt(r) for r in cells]
    return "\n".join(lines)
