"""``tki-bench paper``: the paper-numbers file against the paper's text, and the whole suite end to end on a tiny
random model (``--quick``)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tki_sdk.cli import bench as cli
from tki_sdk.benchmarks.paper import paper_numbers

from conftest import REPO

PAPER = REPO.parent / "shared" / "paper" / "tki-icml2024.md"


@pytest.fixture(scope="module")
def paper_lines() -> list[str]:
    if not PAPER.is_file():
        pytest.skip(f"the paper's text is not at {PAPER}")
    return PAPER.read_text(encoding="utf-8").splitlines()


def test_every_paper_number_is_on_the_line_it_cites(paper_lines):
    doc = paper_numbers()
    cells = doc["cells"]
    assert {(c["table"], c["dataset"]) for c in cells} == {("3", "PACS"), ("3", "Office-Home"), ("5", "PACS"),
                                                            ("6", "PACS"), ("7", "DomainNet")}
    for c in cells:
        tokens = [t.strip() for t in paper_lines[c["line"] - 1].split("\t")]
        assert f"{c['value']:.2f}" in tokens, c
    keys = [(c["table"], c["dataset"], c["method"], c["query"], c["gallery"], c["metric"]) for c in cells]
    assert len(keys) == len(set(keys))  # one value per cell
    # Each table's caption is the paper's.
    for t, caption in doc["captions"].items():
        assert caption in paper_lines and caption.startswith(f"Table {t}.")


@pytest.mark.parametrize("table,dataset,method,query,gallery,metric,row_start", [
    ("3", "PACS", "TKI", "A", "C", "mAP", "Our TKI\t80.94\t82.86"),
    ("3", "Office-Home", "Vanilla CLIP", "R", "P", "Prec", "Vanilla CLIP\t44.02"),
    ("5", "PACS", "L_max only", "A", "Avg.", "Prec", "✓\t-\t77.44"),
    ("6", "PACS", "Strategy 2 (random labels)", "A", "P", "mAP", "Strategy 2\t\t68.74"),
    ("7", "DomainNet", "Euclidean MLP", "Clipart", "Real", "Prec@1", "Ours w/ Euclidean MLP\t\t55.08"),
])
def test_sample_cells_against_the_paper_text(paper_lines, table, dataset, method, query, gallery, metric, row_start):
    """A few cells located by hand in the text: the row (found by its start) and the column position."""
    cell = next(c for c in paper_numbers()["cells"] if (c["table"], c["dataset"], c["method"], c["query"],
                                                       c["gallery"], c["metric"]) == (table, dataset, method, query,
                                                                                      gallery, metric))
    line = paper_lines[cell["line"] - 1]
    assert line.startswith(row_start)
    values = [float(t) for t in line.split("\t") if t.strip().replace(".", "", 1).isdigit()]
    if table in ("3", "5", "6"):
        galleries = {"PACS": {"A": "CPS", "C": "APS", "P": "ACS", "S": "ACP"},
                     "Office-Home": {"A": "CPR", "C": "APR", "P": "ACR", "R": "ACP"}}[dataset][query]
        col = (list(galleries) + ["Avg."]).index(gallery) * 2 + (metric == "Prec") + 8 * (dataset == "Office-Home")
    else:
        cols = ["Real", "Sketch", "Quickdraw", "Infograph", "Painting", "Clipart", "Average"]
        col = [g for g in cols if g != query].index(gallery)  # the query's own column holds "–"
    assert values[col] == cell["value"]


def test_bad_tables_are_one_line(tmp_path, capsys):
    assert cli.main(["paper", "--tables", "4", "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--tables" in err[0]


def test_quick_run_end_to_end_says_the_numbers_mean_nothing(tmp_path, capsys, pacs_dir):
    pytest.importorskip("sklearn")
    code = cli.main(["paper", "--quick", "--dataset-dir", str(pacs_dir), "--out-dir", str(tmp_path), "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in out and "means nothing" in out
    res = json.loads((tmp_path / "paper" / "quick.json").read_text())["results"]
    assert res["numbers_meaningful"] is False and res["dataset"]["paper_dataset"] == "PACS"
    assert set(res["tables"]) == {"3", "5", "6", "7"} and set(res["figures"]) == {"3", "5"}
    runs = res["settings"]["runs"]
    assert runs["losses-max"]["losses"] == "max" and runs["labels-random"]["labels"] == "random"
    assert runs["geometry-euclidean"]["geometry"] == "euclidean" and runs["prompts-2"]["prompts"] == 2
    numbers = paper_numbers()
    t3 = [c for c in res["tables"]["3"]["cells"] if c["paper"] is not None]
    assert len(t3) == 2 * 4 * 4 * 2  # vanilla + TKI rows, 4 queries x (3 galleries + Avg.) x 2 metrics
    for c in t3:
        want = next(n["value"] for n in numbers["cells"] if n["table"] == "3" and n["dataset"] == "PACS"
                    and n["method"] == c["paper_method"] and n["query"] == res["dataset"]["letters"][c["query"]]
                    and n["gallery"] == (c["gallery"] if c["gallery"] == "Avg." else res["dataset"]["letters"][c["gallery"]])
                    and n["metric"] == c["paper_column"])
        assert c["paper"] == want and c["diff_pp"] == pytest.approx(c["ours"] - want)
    # Table 5's "both" row and Table 6's "strategy 1" row are the base run, as Table 3's TKI (cosine) row.
    both = {(c["gallery"], c["metric"]): c["ours"] for c in res["tables"]["5"]["cells"] if c["method"] == "both"}
    tki = {(c["gallery"], c["metric"]): c["ours"] for c in res["tables"]["3"]["cells"]
           if c["method"] == "TKI (cosine)" and c["query"] == "art_painting"}
    assert both == tki
    assert not any(w.lower() in {"dog", "elephant", "giraffe", "guitar", "horse", "house", "person"}
                   for w in res["tables"]["6"]["random_labels"])
    assert all(t in res["seconds"]["tables"] for t in ("3", "5", "6", "7"))
    for p in res["plots"]:
        assert Path(p).read_bytes()[:4] == b"\x89PNG"
