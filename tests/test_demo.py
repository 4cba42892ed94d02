"""`tki demo` end to end on the tiny model: train, export, embed a PACS sample, search with sketches."""
from __future__ import annotations

import json
from pathlib import Path

from tki_sdk.cli.main import main


def test_demo_runs_the_whole_pipeline(tmp_path: Path, pacs_dir: Path, capsys) -> None:
    out = tmp_path / "demo"
    rc = main(["demo", "--model", "TKI-Tiny-ViT", "--data", str(pacs_dir), "--out", str(out),
               "--steps-expand", "2", "--steps-aggregate", "3", "--per-class", "2", "-k", "3"])
    assert rc == 0
    text = capsys.readouterr().out
    meta = json.loads((out / "model" / "tki.json").read_text())
    assert {"fp32", "int8"} <= set(meta["artifacts"])
    assert (out / "gallery").is_dir() and (out / "checkpoint" / "model.safetensors").is_file()
    # one line per sketch query (7 classes) with k=3 hits, then the parity figures and the weights warning
    hits = [ln for ln in text.splitlines() if " sketch " in ln and "->" in ln]
    assert len(hits) == 7 and all(ln.count("(") == 3 for ln in hits)
    assert "same-class hits:" in text and "fp32" in text and "random init" in text
    assert not any((pacs_dir / "photo").rglob("*.tmp"))  # PACS is read in place, never written


def test_demo_without_data_is_one_line(tmp_path: Path, capsys) -> None:
    rc = main(["demo", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
