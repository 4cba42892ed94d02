"""The floors (ARCHITECTURE.md, "Floors") as import-linter contracts: ``.importlinter`` at the repository root.

``export/``, ``runtime/`` and ``benchmarks/`` are mapped into the ``tki_sdk`` namespace by setuptools, so the
linter runs on a copy of the source laid out as an installed package (``tki_sdk/runtime/...``). Imports made
inside functions count (grimp reads every import statement of a module).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / ".importlinter"


def _installed_layout(dst: Path) -> Path:
    """``dst/tki_sdk`` with ``export``, ``runtime``, ``benchmarks`` (and any other mapped folder) inside."""
    import tomllib

    mapping = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    pkg = dst / "tki_sdk"
    shutil.copytree(REPO / mapping["tki_sdk"], pkg, ignore=shutil.ignore_patterns("__pycache__"))
    for name, folder in mapping.items():
        if name != "tki_sdk":
            shutil.copytree(REPO / folder, dst / name.replace(".", "/"),
                            ignore=shutil.ignore_patterns("__pycache__", "results", "*.sh", "*.md"))
    return dst


def _lint(root: Path) -> subprocess.CompletedProcess:
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(config_filename=sys.argv[2], no_cache=True))")
    return subprocess.run([sys.executable, "-c", code, str(root), str(CONFIG)], capture_output=True, text=True,
                          timeout=300, cwd=root)


def test_the_floors_hold():
    pytest.importorskip("importlinter")
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        res = _lint(_installed_layout(Path(d)))
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "Contracts: 8 kept, 0 broken" in res.stdout, res.stdout[-2000:]


@pytest.mark.parametrize("module,planted,broken", [
    # a back-arrow inside a function: the training core reaching up to the runtime
    ("tki_sdk/losses.py", "\n\ndef _planted():\n    from tki_sdk.runtime import Gallery  # noqa\n", "training core"),
    # the runtime reaching torch
    ("tki_sdk/runtime/images.py", "\n\ndef _planted():\n    import torch  # noqa\n", "runtime never sees"),
    # a circle between two runtime modules
    ("tki_sdk/runtime/native.py", "\n\ndef _planted():\n    from . import gallery  # noqa\n", "No circles"),
])
def test_a_planted_back_arrow_fails(tmp_path, module, planted, broken):
    pytest.importorskip("importlinter")
    root = _installed_layout(tmp_path)
    with open(root / module, "a") as f:
        f.write(planted)
    res = _lint(root)
    assert res.returncode != 0
    assert "BROKEN" in res.stdout and broken in res.stdout, res.stdout[-3000:]
