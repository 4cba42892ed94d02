"""`tki train` / `tki info` from the command line: help, success, and one-line errors."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PACS_DIR, require_pacs


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tki_sdk.cli.main", *args], capture_output=True, text=True, cwd=cwd)


def test_help_teaches() -> None:
    for args in (["--help"], ["train", "--help"], ["info", "--help"]):
        r = run(*args)
        assert r.returncode == 0 and "example" in r.stdout, args


def test_train_and_info(tmp_path: Path) -> None:
    out = tmp_path / "ck"
    r = run("train", "--model", "TKI-Tiny-ViT", "--classes", "dog,horse", "--out", str(out),
            "--steps-expand", "3", "--steps-aggregate", "3", "--prompts", "3", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "checkpoint written" in r.stdout and (out / "model.safetensors").is_file()
    info = run("info", str(out))
    assert info.returncode == 0 and "random init" in info.stdout and "dog, horse" in info.stdout


def test_classes_from_dataset_dir(tmp_path: Path) -> None:
    require_pacs()
    from tki_sdk.common.imagefolders import discover_classes

    assert discover_classes(PACS_DIR) == ["dog", "elephant", "giraffe", "guitar", "horse", "house", "person"]
    assert discover_classes(PACS_DIR.parent) == discover_classes(PACS_DIR)  # <root>/images/<domain>/<class>
    flat = tmp_path / "flat"
    for c in ("b", "a"):
        (flat / c).mkdir(parents=True)
        (flat / c / "x.jpg").write_bytes(b"")
    (flat / "notes").mkdir()  # no images: not a class
    assert discover_classes(flat) == ["a", "b"]
    two = tmp_path / "two" / "images"
    for d, c in [("photo", "dog"), ("sketch", "cat"), ("sketch", "dog")]:
        (two / d / c).mkdir(parents=True)
        (two / d / c / "1.png").write_bytes(b"")
    (two.parent / "splits").mkdir()
    (two / "notes").mkdir()
    assert discover_classes(two.parent) == ["cat", "dog"]
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="no class folders with images"):
        discover_classes(empty)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "ViT-Nope", "--classes", "a,b"], "unknown model"),
        (["--model", "TKI-Tiny-ViT", "--classes", " , "], "class list is empty"),
        (["--model", "TKI-Tiny-ViT"], "exactly one of --classes"),
        (["--model", "TKI-Tiny-ViT", "--classes", "a", "--pretrained", "/nope/w.pt"], "does not exist"),
        (["--model", "TKI-Tiny-ViT", "--classes-file", "/nope/classes.txt"], "does not exist"),
        (["--model", "TKI-Tiny-ViT", "--dataset-dir", "/nope/data"], "does not exist"),
    ],
)
def test_bad_input_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    r = run("train", *args, "--out", str(tmp_path / "o"), "--no-progress")
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("WARNING")]
    assert len(lines) == 1 and message in lines[0], r.stderr


def test_info_on_bad_paths(tmp_path: Path) -> None:
    r = run("info", str(tmp_path / "missing"))
    assert r.returncode == 2 and "does not exist" in r.stderr
    r = run("info", str(tmp_path))
    assert r.returncode == 2 and "is not a checkpoint" in r.stderr


def test_argparse_errors_are_one_line() -> None:
    for args in (["train", "--model", "x"], ["nope"], ["train", "--model", "x", "--classes", "a", "--out", "o",
                                                        "--prompts", "many"]):
        r = run(*args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
        assert "see tki" in r.stderr and "--help" in r.stderr


def test_unwritable_out_fails_before_training(tmp_path: Path) -> None:
    afile = tmp_path / "file"
    afile.write_text("x")
    for out, msg in ((afile, "is not a folder"), (afile / "sub", "not writable")):
        r = run("train", "--model", "TKI-Tiny-ViT", "--classes", "a,b", "--out", str(out), "--no-progress")
        assert r.returncode == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
