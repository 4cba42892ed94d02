"""Figures a reader can trust: the README and the documentation quote no measured figure by hand.

Measured figures reach the site only through the build hook (``docs/hooks.py``), which reads them from the
committed result files under ``benchmarks/results/`` together with the machine each file records; so a
figure cannot drift from its file, and no table mixes files (each generated table is one file, one machine).
"""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
#: A number followed by a unit of a measurement (rates, times, sizes, speed-ups against a peer).
MEASURED = re.compile(
    r"\b\d[\d,]*(?:\.\d+)?\s*(?:img/s|images/s|texts/s|QPS|q/s|vectors/s|GFLOP/s|GOP/s|ms\b|MiB|GiB|"
    r"x (?:torch|FAISS|exact|plain|one process)|% of (?:peak|one process))", re.I)


def _load_hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", REPO / "docs" / "hooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _without_generated_blocks(text: str) -> str:
    """``text`` with the README's generated search tables blanked (they are checked against their files by
    ``test_readme_tables_are_what_their_files_give``); line numbers are kept."""
    hooks = _load_hooks()
    return hooks.README_BLOCK.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def test_no_hand_typed_measurements_in_readme_or_docs():
    found = []
    for page in PAGES:
        for n, line in enumerate(_without_generated_blocks(page.read_text()).splitlines(), 1):
            for m in MEASURED.finditer(line):
                found.append(f"{page.relative_to(REPO)}:{n}: {m.group(0)}")
    assert not found, "measured figures must come from result files via docs/hooks.py:\n" + "\n".join(found)


def test_every_result_file_is_listed_with_its_machine():
    hooks = _load_hooks()
    catalogue = hooks._catalogue()
    files = [f for f in (REPO / "benchmarks" / "results").rglob("*.json")
             if isinstance(json.loads(f.read_text()), dict) and "machine" in json.loads(f.read_text())]
    assert files
    for f in files:
        row = next((ln for ln in catalogue.splitlines() if f"`{f.relative_to(REPO)}`" in ln), None)
        assert row is not None, f"{f} is missing from the benchmarks page"
        machine = json.loads(f.read_text())["machine"]
        assert hooks.machine_line(machine) in row
        assert "cores visible" in row and "load" in row


def test_a_generated_table_reads_its_figures_from_the_file(tmp_path, monkeypatch):
    hooks = _load_hooks()
    (tmp_path / "suite").mkdir()
    d = {"suite": "x", "timestamp": "2026-12-01T00:00", "command": "tki-bench x",
         "machine": {"cpu_model": "Test CPU", "usable_cpus": 2, "load_average_1_5_15min": [0.5, 0.4, 0.3]},
         "results": {"rows": [{"name": "a", "img_per_s": 12.345678}]}}
    (tmp_path / "suite" / "r.json").write_text(json.dumps(d))
    monkeypatch.setattr(hooks, "RESULTS", tmp_path)
    table = hooks._table("suite/r.json")
    assert "Test CPU, 2 cores visible" in table and "load 0.5/0.4/0.3" in table and "| a | 12.35 |" in table


def test_readme_tables_are_what_their_files_give():
    """Each ``<!-- tki:search-table FILE -->`` block of the README equals the table its file gives today
    (``python docs/hooks.py`` rewrites them); a changed figure in the block or in the file fails."""
    hooks = _load_hooks()
    text = (REPO / "README.md").read_text()
    blocks = hooks.README_BLOCK.findall(text)
    assert blocks, "the README shows the search backends' table"
    assert hooks.refresh_readme(text) == text, "README search tables differ from their files: run python docs/hooks.py"
    changed = text.replace(blocks[0][2], blocks[0][2].replace("|", "| 1 |", 1))
    assert hooks.refresh_readme(changed) != changed
