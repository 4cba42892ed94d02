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


def _num(tok: str) -> float | None:
    try:
        return float(tok)
    except ValueError:
        return None


def _paper_grid(lines: list[str]) -> dict[tuple, tuple[float, int]]:
    """Every numeric cell of Tables 2-7 read from the paper's text by its own table, row and column headers:
    ``(table, dataset, backbone, method, query, gallery, metric) -> (value, 1-based line)``. Written apart from
    the transcription: it walks each table's header lines ("A → C", gallery names) and assigns columns from them."""
    grid: dict[tuple, tuple[float, int]] = {}
    start = {t: next(i for i, ln in enumerate(lines) if ln.startswith(f"Table {t}.")) for t in "234567"}

    def put(key: tuple, value: float, i: int) -> None:
        assert key not in grid, key
        grid[key] = (value, i + 1)

    # Table 2: gallery names on the header line, query in column 2 of the vanilla row.
    i = start["2"]
    head = next(j for j in range(i, i + 6) if "Sketch" in lines[j] and "Quickdraw" in lines[j])
    gals = [t.replace("Clip-art", "Clipart") for t in lines[head].split("\t") if t.strip()] + ["Avg."]
    query = None
    for j in range(head + 2, head + 14):
        toks = lines[j].split("\t")
        method = {"Vanilla CLIP": "Vanilla CLIP", "Our TKI": "TKI"}[toks[0]]
        query = toks[1].replace("Clip-art", "Clipart") or query
        vals = toks[2:]
        for gi, g in enumerate(gals):
            for mi, m in enumerate(("mAP", "Prec")):
                v = _num(vals[2 * gi + mi])
                assert (v is None) == (g == query), (j, g)
                if v is not None:
                    put(("2", "DomainNet", None, method, query, g, m), v, j)
    # Tables 3 and 4: blocks of a "X → Y" header line (two halves of four column groups) and two method rows.
    halves = {"3": (("PACS", None), ("Office-Home", None)), "4": (("PACS", "ResNet-50"), ("PACS", "ViT-L/14"))}
    for t, (left, right) in halves.items():
        j = start[t]
        end = start[str(int(t) + 1)]
        groups = None
        while j < end:
            ln = lines[j]
            if "→" in ln:
                toks = [x.strip() for x in ln.split("\t") if x.strip() and x.strip() != "Method"]
                groups = []
                for x in toks:
                    q, g = (x.split(" → ") if "→" in x else (groups[-1][0], "Avg."))
                    groups.append((q, g))
                assert len(groups) == 8, ln
            elif ln.startswith(("Vanilla CLIP\t", "Our TKI\t")) and groups:
                method = "Vanilla CLIP" if ln.startswith("Vanilla") else "TKI"
                vals = [_num(x) for x in ln.split("\t")[1:] if x.strip()]
                assert len(vals) == 16
                for gi, (q, g) in enumerate(groups):
                    ds, bb = left if gi < 4 else right
                    for mi, m in enumerate(("mAP", "Prec")):
                        put((t, ds, bb, method, q, g, m), vals[2 * gi + mi], j)
            j += 1
    # Tables 5 and 6: one header line of groups (query A), rows named by check marks / strategy.
    names5 = {("-", "-"): "neither", ("✓", "-"): "L_max only", ("-", "✓"): "L_min only", ("✓", "✓"): "both"}
    names6 = {"Baseline": "Baseline (vanilla CLIP)", "Strategy 2": "Strategy 2 (random labels)",
              "Strategy 1": "Strategy 1 (true labels)"}
    for t in ("5", "6"):
        j = next(k for k in range(start[t], start[t] + 5) if "→" in lines[k])
        groups = [x.strip() for x in lines[j].split("\t") if x.strip()]
        groups = [(g.split(" → ") if "→" in g else ("A", "Avg.")) for g in groups]
        for k in range(j + 1, j + 7):
            toks = lines[k].split("\t") + [""]
            if t == "5" and (toks[0], toks[1]) in names5:
                method = names5[(toks[0], toks[1])]
            elif t == "6" and toks[0] in names6:
                method = names6[toks[0]]
            else:
                continue
            vals = [_num(x) for x in toks[2:]]
            for gi, (q, g) in enumerate(groups):
                for mi, m in enumerate(("mAP", "Prec")):
                    put((t, "PACS", None, method, q, g, m), vals[2 * gi + mi], k)
    # Table 7: gallery names on the header line; groups of three rows, the query named on the middle one.
    j = start["7"]
    head = next(k for k in range(j, j + 5) if lines[k].split("\t")[2:3] == ["Real"])
    gals = [x for x in lines[head].split("\t") if x.strip()] + ["Average"]
    names7 = {"Vanilla CLIP": "Vanilla CLIP", "Ours w/ non-Euclidean MLP": "non-Euclidean MLP",
              "Ours w/ Euclidean MLP": "Euclidean MLP"}
    rows = list(range(head + 1, head + 19))
    for r0 in rows[::3]:
        query = lines[r0 + 1].split("\t")[1]
        for k in (r0, r0 + 1, r0 + 2):
            toks = lines[k].split("\t")
            vals = [_num(x) for x in toks[2:]]
            for gi, g in enumerate(gals):
                assert (vals[gi] is None) == (g == query)
                if vals[gi] is not None:
                    put(("7", "DomainNet", None, names7[toks[0]], query, g, "Prec@1"), vals[gi], k)
    return grid


def _key(c: dict) -> tuple:
    return (c["table"], c["dataset"], c.get("backbone"), c["method"], c["query"], c["gallery"], c["metric"])


def test_every_paper_number_is_the_cell_of_the_paper_by_table_row_and_column(paper_lines):
    """All ~560 transcribed cells against the paper's text read independently: same cells, no more, no fewer,
    same value, same line."""
    doc = paper_numbers()
    cells = doc["cells"]
    grid = _paper_grid(paper_lines)
    keys = [_key(c) for c in cells]
    assert len(keys) == len(set(keys))  # one value per cell
    assert set(keys) == set(grid)  # every cell of Tables 2-7, nothing else
    assert len(cells) == 144 + 128 + 128 + 32 + 24 + 108
    for c in cells:
        assert grid[_key(c)] == (c["value"], c["line"]), c
    # Each table's caption is the paper's.
    assert set(doc["captions"]) == {"2", "3", "4", "5", "6", "7"}
    for t, caption in doc["captions"].items():
        assert caption in paper_lines and caption.startswith(f"Table {t}.")


def test_the_grid_reader_sees_a_changed_cell(paper_lines):
    """The check above can fail: one digit changed in the text moves one cell's value."""
    changed = list(paper_lines)
    i = next(k for k, ln in enumerate(changed) if ln.startswith("Vanilla CLIP\tQuickdraw"))
    changed[i] = changed[i].replace("0.21", "0.12", 1)
    a, b = _paper_grid(paper_lines), _paper_grid(changed)
    assert [k for k in a if a[k] != b[k]] == [("2", "DomainNet", None, "Vanilla CLIP", "Quickdraw", "Infograph", "mAP")]


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
    assert cli.main(["paper", "--tables", "8", "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--tables" in err[0]


def test_other_datasets_need_their_folder(tmp_path, capsys):
    assert cli.main(["paper", "--dataset", "domainnet", "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--dataset-dir" in err[0]


def _toy_table(method: str, value: float) -> "AccuracyTable":
    from tki_sdk.benchmarks.accuracy import AccuracyTable

    doms = ["art_painting", "cartoon", "photo", "sketch"]
    metrics = ["mAP", "mAP@200", "mAP@200:min", "Prec@200"]
    cells = {q: {g: {m: value + 0.01 * i for i, m in enumerate(metrics)} for g in doms if g != q} for q in doms}
    return AccuracyTable(method, "w", doms, cells, metrics)


@pytest.mark.parametrize("convention,metric", [("whole", "mAP"), ("hits", "mAP@200"), ("min", "mAP@200:min")])
def test_rendered_table_compares_the_convention_asked_and_marks_the_papers_contradictions(convention, metric):
    from tki_sdk.benchmarks.metrics import map_key
    from tki_sdk.benchmarks.paper import _letters, _Paper, _render

    numbers = paper_numbers()
    t = _toy_table("TKI (cosine)", 0.5)
    letters = _letters(t.domains, numbers, "PACS")
    md, cells, notes = _render("3", [("TKI (cosine)", "TKI", t)], t.domains, letters, _Paper(numbers), ("PACS", None),
                               [("mAP", map_key(convention, 200)), ("Prec", "Prec@200")], "Avg.")
    a_c = next(c for c in cells if c["query"] == "art_painting" and c["gallery"] == "cartoon" and c["paper_column"] == "mAP")
    assert a_c["metric"] == metric and a_c["ours"] == pytest.approx(100 * t.cells["art_painting"]["cartoon"][metric])
    assert a_c["paper"] == 80.94  # Table 3, TKI, A -> C, mAP (line 204)
    flagged = [c for c in cells if c["paper_inconsistent"]]
    assert [(c["query"], c["gallery"], c["paper_column"]) for c in flagged] == [("photo", "Avg.", "Prec")]
    assert "88.03 †" in md and len(notes) == 1 and "82.75" in notes[0]


def test_quick_run_end_to_end_says_the_numbers_mean_nothing(tmp_path, capsys, pacs_dir):
    pytest.importorskip("sklearn")
    code = cli.main(["paper", "--quick", "--dataset-dir", str(pacs_dir), "--out-dir", str(tmp_path), "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in out and "means nothing" in out
    # Every table of the paper is printed, each naming the convention its "mAP" column is read as.
    for title in ("Table 2 (DomainNet)", "Table 3 (PACS half)", "Table 3 (Office-Home half)",
                  "Table 4 (ResNet-50 on PACS)", "Table 4 (ViT-L/14 on PACS)", "Table 5", "Table 6", "Table 7"):
        line = next(ln for ln in out.splitlines() if ln.startswith(f"### {title}"))
        if not title.startswith("Table 7"):
            assert "'mAP' = mAP over the whole gallery" in line, line
    assert "compared with **mAP**" in out and "--map-convention hits|min" in out
    assert "88.03 †" in out and "60.62 †" in out and "0.80 †" in out  # the paper's own contradictions, marked
    res = json.loads((tmp_path / "paper" / "quick.json").read_text())["results"]
    assert res["numbers_meaningful"] is False and res["dataset"]["paper_dataset"] == "PACS"
    assert res["map_convention"]["used"] == "whole" and res["settings"]["column_metrics"]["mAP"] == "mAP"
    assert set(res["tables"]) == {"2", "3", "4", "5", "6", "7"} and set(res["figures"]) == {"3", "5"}
    assert res["tables"]["2"]["paper_only"] and res["tables"]["3"]["Office-Home"]["paper_only"]
    runs = res["settings"]["runs"]
    assert runs["losses-max"]["losses"] == "max" and runs["labels-random"]["labels"] == "random"
    assert runs["geometry-euclidean"]["geometry"] == "euclidean" and runs["prompts-2"]["prompts"] == 2
    # Table 7: the paper's Euclidean row as written (eq. 6 at τ), the matched one as a row of ours.
    assert runs["geometry-euclidean"]["temperature_rule"] == "as_written"
    assert runs["geometry-euclidean-matched"]["temperature_rule"] == "matched"
    t7 = res["tables"]["7"]["cells"]
    assert {c["paper_method"] for c in t7 if "matched" in c["method"]} == {None}
    numbers = paper_numbers()
    t3 = [c for c in res["tables"]["3"]["PACS"]["cells"] if c["paper"] is not None]
    assert len(t3) == 2 * 4 * 4 * 2  # vanilla + TKI rows, 4 queries x (3 galleries + Avg.) x 2 metrics
    for c in t3:
        want = next(n["value"] for n in numbers["cells"] if n["table"] == "3" and n["dataset"] == "PACS"
                    and n["method"] == c["paper_method"] and n["query"] == res["dataset"]["letters"][c["query"]]
                    and n["gallery"] == (c["gallery"] if c["gallery"] == "Avg." else res["dataset"]["letters"][c["gallery"]])
                    and n["metric"] == c["paper_column"])
        assert c["paper"] == want and c["diff_pp"] == pytest.approx(c["ours"] - want)
        assert c["metric"] == {"mAP": "mAP", "Prec": "Prec@200"}[c["paper_column"]]
    # Table 5's "none" row is the paper's experiment, vanilla CLIP; "both" and Table 6's "strategy 1" are the
    # base run, as Table 3's TKI (cosine) row.
    def row(cells, method, query="art_painting"):
        return {(c["gallery"], c["metric"]): c["ours"] for c in cells if c["method"] == method and c["query"] == query}
    t3_all = res["tables"]["3"]["PACS"]["cells"]
    assert row(res["tables"]["5"]["cells"], "both") == row(t3_all, "TKI (cosine)")
    assert row(res["tables"]["5"]["cells"], "none = vanilla CLIP (the paper's row)") == row(t3_all, "Vanilla CLIP")
    assert row(res["tables"]["5"]["cells"], "ours, not in the paper: stage 1 skipped, head trained") != row(
        t3_all, "Vanilla CLIP")
    # Every mAP convention and Prec@1 on every run.
    for tab in res["tables"]["5"]["tables"]:
        assert set(tab["metrics"]) >= {"mAP", "mAP@200", "mAP@200:min", "Prec@200", "Prec@1"}
    assert not any(w.lower() in {"dog", "elephant", "giraffe", "guitar", "horse", "house", "person"}
                   for w in res["tables"]["6"]["random_labels"])
    assert all(t in res["seconds"]["tables"] for t in ("2", "3", "4", "5", "6", "7"))
    for p in res["plots"]:
        assert Path(p).read_bytes()[:4] == b"\x89PNG"


def _images(root: Path, layout: dict[str, list[str]], n: int, lists: bool = False) -> None:
    """Tiny real JPEGs in <root>/<domain>/<class>/ (DomainNet-style test lists when ``lists``)."""
    from PIL import Image

    rng = __import__("numpy").random.default_rng(0)
    for domain, classes in layout.items():
        entries = []
        for label, cls in enumerate(classes):
            (root / domain / cls).mkdir(parents=True)
            for i in range(n):
                rel = f"{domain}/{cls}/{domain}_{label:03d}_{i:06d}.jpg"
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype="uint8")).save(root / rel)
                entries.append(f"{rel} {label}")
        if lists:
            (root / f"{domain}_test.txt").write_text("\n".join(entries) + "\n")


def test_quick_run_on_domainnet_compares_table_2(tmp_path, capsys):
    """A DomainNet folder with the official test lists: Table 2 is run and compared with the paper's cells."""
    root = tmp_path / "domainnet"
    _images(root, {"real": ["bird", "cat"], "sketch": ["bird", "cat"], "clipart": ["bird", "cat"]}, 2, lists=True)
    code = cli.main(["paper", "--quick", "--dataset", "domainnet", "--dataset-dir", str(root), "--tables", "2",
                     "--figures", "none", "--out-dir", str(tmp_path / "out"), "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "### Table 2 (DomainNet); 'mAP' = mAP over the whole gallery" in out
    res = json.loads((tmp_path / "out" / "paper" / "quick.json").read_text())["results"]
    assert res["dataset"]["split"] == "test" and res["dataset"]["letters"] == {
        "real": "Real", "sketch": "Sketch", "clipart": "Clipart"}
    cells = res["tables"]["2"]["cells"]
    rs = next(c for c in cells if c["method"] == "Vanilla CLIP" and c["query"] == "real" and c["gallery"] == "sketch"
              and c["paper_column"] == "mAP")
    assert rs["paper"] == 21.03 and rs["metric"] == "mAP"
    # The Avg. column is ours over the galleries present; the paper's averages five galleries.
    assert {c["gallery"] for c in cells} == {"real", "sketch", "clipart", "Avg."}


def test_quick_run_on_office_home_compares_its_half_of_table_3(tmp_path, capsys):
    top = tmp_path / "OfficeHomeDataset_10072016"
    _images(top, {"Art": ["Bike", "Mug"], "Clipart": ["Bike", "Mug"], "Product": ["Bike", "Mug"],
                  "Real World": ["Bike", "Mug"]}, 2)
    code = cli.main(["paper", "--quick", "--dataset", "officehome", "--dataset-dir", str(tmp_path), "--tables", "3",
                     "--figures", "none", "--map-convention", "min", "--out-dir", str(tmp_path / "out"),
                     "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "### Table 3 (Office-Home half): cross-domain retrieval; 'mAP' = mAP@200 over min(200, R)" in out
    assert "NOT the convention the paper's own numbers support (whole)" in out
    assert "### Table 3 (PACS half) -- the paper's numbers only" in out
    res = json.loads((tmp_path / "out" / "paper" / "quick.json").read_text())["results"]
    cells = res["tables"]["3"]["Office-Home"]["cells"]
    rw = next(c for c in cells if c["method"] == "Vanilla CLIP" and c["query"] == "Real World"
              and c["gallery"] == "Product" and c["paper_column"] == "mAP")
    assert rw["paper"] == 47.48 and rw["metric"] == "mAP@200:min"  # Table 3, Office-Home, R -> P (line 215)
