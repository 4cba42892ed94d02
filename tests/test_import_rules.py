"""The floors (ARCHITECTURE.md, "Floors") as import-linter contracts: ``.importlinter`` at the repository root.

The linter reads ``src/`` as it is (the folder tree is the package tree). Imports made inside functions count
(grimp reads every import statement of a module). The contracts name folders only, so the planted
back-arrows below go into brand-new files: a file added to a folder is covered without editing any list.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
CONFIG = REPO / ".importlinter"


def _lint(src: Path) -> subprocess.CompletedProcess:
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(config_filename=sys.argv[2], no_cache=True))")
    return subprocess.run([sys.executable, "-c", code, str(src), str(CONFIG)], capture_output=True, text=True,
                          timeout=300, cwd=src)


def _contract_count() -> int:
    return sum(1 for line in CONFIG.read_text().splitlines() if line.startswith("[importlinter:contract:"))


def test_the_floors_hold():
    pytest.importorskip("importlinter")
    res = _lint(SRC)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert f"Contracts: {_contract_count()} kept, 0 broken" in res.stdout, res.stdout[-2000:]


@pytest.mark.parametrize("new_file,planted,broken", [
    # a back-arrow inside a function: the training core reaching up to the runtime
    ("train/planted_new.py", "def _planted():\n    from tki_sdk.runtime import Gallery  # noqa\n", "The floors"),
    # the runtime reaching torch
    ("runtime/engine/planted_new.py", "def _planted():\n    import torch  # noqa\n", "never see torch"),
    # the index reaching up to the pipeline
    ("runtime/index/planted_new.py", "from tki_sdk.runtime.pipeline import ingest  # noqa\n", "Inside the runtime"),
    # Ray outside the distributed module
    ("runtime/pipeline/planted_new.py", "import ray  # noqa\n", "Ray is imported"),
    # the common floor reaching a front door
    ("common/planted_new.py", "from tki_sdk.cli import main  # noqa\n", "The floors"),
    # a circle between two modules of one folder
    ("serve/planted_new.py", "from tki_sdk.serve import app  # noqa\n\n\ndef f():\n    pass\n", None),
])
def test_a_planted_back_arrow_in_a_new_file_fails(tmp_path, new_file, planted, broken):
    pytest.importorskip("importlinter")
    src = tmp_path / "src"
    shutil.copytree(SRC, src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (src / "tki_sdk" / new_file).write_text(planted)
    if broken is None:  # close the circle: app imports the new module back
        with open(src / "tki_sdk" / "serve" / "app.py", "a") as f:
            f.write("\n\ndef _planted():\n    from tki_sdk.serve import planted_new  # noqa\n")
        broken = "No circles"
    res = _lint(src)
    assert res.returncode != 0
    assert "BROKEN" in res.stdout and broken in res.stdout, res.stdout[-3000:]


def test_argparse_lives_in_cli_only():
    """Library code takes typed configs and option objects; only ``tki_sdk/cli/`` builds parsers."""
    import ast

    offenders = []
    for f in sorted((SRC / "tki_sdk").rglob("*.py")):
        if "cli" in f.relative_to(SRC / "tki_sdk").parts[:1]:
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] == "argparse" for n in names):
                offenders.append(f"{f.relative_to(SRC)}:{node.lineno}")
    assert not offenders, offenders
