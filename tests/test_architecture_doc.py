"""ARCHITECTURE.md cannot go stale silently: every path it names exists, and every package folder is named."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "src" / "tki_sdk"
DOC = (REPO / "ARCHITECTURE.md").read_text()


def _named_paths() -> set[str]:
    """Backquoted names ending in .py / .json / .txt or a folder slash, as written in the doc."""
    return {m for m in re.findall(r"`([\w./-]+(?:\.py|\.json|\.txt|/))`", DOC) if "*" not in m}


#: Files that tki writes into user folders (the on-disk contracts), named by the doc but not in the repository.
WRITTEN_BY_TKI = {"config.json", "tki.json", "gallery.json", "engine_choice.json", "train_curves.json",
                  "model.safetensors", "model.onnx", "run.json"}


def _exists(name: str) -> bool:
    if name.rsplit("/", 1)[-1] in WRITTEN_BY_TKI:
        return True
    for base in (PKG, REPO, PKG / "benchmarks", PKG / "runtime", REPO / "benchmarks" / "results"):
        if (base / name).exists():
            return True
    return False


def test_every_path_named_in_the_architecture_doc_exists():
    missing = sorted(n for n in _named_paths() if not _exists(n))
    assert not missing, f"ARCHITECTURE.md names paths that do not exist: {missing}"


def test_every_package_folder_is_on_the_map():
    folders = sorted(str(p.parent.relative_to(PKG)) for p in PKG.rglob("__init__.py") if p.parent != PKG)
    tree = DOC[DOC.index("src/tki_sdk/") : DOC.index("## Floors")]
    for folder in folders:
        leaf = folder.rsplit("/", 1)[-1]
        if folder == "train/model_configs":
            assert "train/model_configs/" in DOC
            continue
        assert re.search(rf"\b{leaf}/", tree), f"package folder {folder}/ is missing from ARCHITECTURE.md's tree"


def test_every_module_is_on_the_map():
    """Every module file is named in "Where each concept lives" (by its path under src/tki_sdk/, or by its
    name in a row that names its folder's modules)."""
    missing = []
    for f in sorted(PKG.rglob("*.py")):
        if f.name == "__init__.py":
            continue
        rel = str(f.relative_to(PKG))
        if f"`{rel}`" not in DOC and f"`{f.name}`" not in DOC:
            missing.append(rel)
    assert not missing, f"modules missing from ARCHITECTURE.md: {missing}"
