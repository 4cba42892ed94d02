"""tki-bench command line: --help per subcommand, one-line errors with exit codes, missing suites, `all`."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tki_sdk.benchmarks import search
from tki_sdk.cli import bench as cli
from tki_sdk.benchmarks.results import markdown_table, to_jsonable, write_result


@pytest.mark.parametrize("suite", [*cli.SUITES, "all", None])
def test_help(suite, capsys):
    argv = ["--help"] if suite is None else [suite, "--help"]
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: tki-bench" in out
    assert "--quick" in out or suite is None
    assert "examples:" in out


def test_search_help_lists_its_options(capsys):
    with pytest.raises(SystemExit):
        cli.main(["search", "--help"])
    out = capsys.readouterr().out
    for opt in ("--sizes", "--dtypes", "--expansion-search", "--vectors", "--out-dir"):
        assert opt in out


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["search", "--sizes", "abc"], "--sizes"),
        (["search", "--dtypes", "f8"], "--dtypes"),
        (["nosuch"], "invalid choice"),
        (["search", "--bogus"], "--bogus"),
        (["all", "--suites", "search,nosuch"], "nosuch"),
        (["accuracy", "--dataset-dir", "/nonexistent/data", "--vanilla", "TKI-Tiny-ViT"], "/nonexistent/data"),
    ],
)
def test_bad_input_one_line_exit_2(argv, needle, capsys, tmp_path):
    assert cli.main([*argv, "--out-dir", str(tmp_path)] if argv[0] != "nosuch" else argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert needle in err[0]


def test_no_arguments_prints_help_and_fails(capsys):
    assert cli.main([]) == 2
    assert "usage: tki-bench" in capsys.readouterr().out


def test_missing_suite_is_one_clear_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(cli.SUITES, "optional", ("tki_sdk.benchmarks._optional_not_installed", "an optional suite whose module is not installed"))
    assert cli.main(["optional", "--out-dir", str(tmp_path)]) == cli.EXIT_MISSING
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tki_sdk.benchmarks._optional_not_installed is missing" in err[0]
    with pytest.raises(SystemExit):
        cli.main(["optional", "--help"])
    assert "not available" in capsys.readouterr().out


def test_all_runs_present_suites_and_lists_missing(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(cli.SUITES, "optional", ("tki_sdk.benchmarks._optional_not_installed", "an optional suite whose module is not installed"))
    monkeypatch.setitem(search.QUICK_DEFAULTS, "sizes", [600])
    monkeypatch.setitem(search.QUICK_DEFAULTS, "dim", 16)
    monkeypatch.setitem(search.QUICK_DEFAULTS, "queries", 20)
    monkeypatch.setitem(search.QUICK_DEFAULTS, "expansion_search", [32])
    code = cli.main(["all", "--quick", "--suites", "search,optional", "--out-dir", str(tmp_path), "--no-progress"])
    assert code == 0
    cap = capsys.readouterr()
    assert "skipped: suite 'optional' is not available" in cap.err
    assert "search: ok" in cap.out and "optional: missing" in cap.out
    doc = json.loads((tmp_path / "search" / "quick.json").read_text())
    assert doc["results"]["runs"][0]["n"] == 600


_SCRIPT = shutil.which("tki-bench", path=str(Path(sys.executable).parent)) or shutil.which("tki-bench")


@pytest.mark.skipif(_SCRIPT is None, reason="console script not installed")
def test_console_script():
    p = subprocess.run([_SCRIPT, "search", "--sizes", "x"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert len(p.stderr.strip().splitlines()) == 1


def test_result_envelope_and_json_conversion(tmp_path):
    import numpy as np

    path = write_result(tmp_path, "demo", "r1", {"a": np.float32(1.5), "b": np.arange(3), "c": float("nan"), "p": tmp_path},
                        command=["tki-bench", "demo"])
    doc = json.loads(path.read_text())
    assert path == tmp_path / "demo" / "r1.json"
    assert doc["results"] == {"a": 1.5, "b": [0, 1, 2], "c": None, "p": str(tmp_path)}
    assert doc["command"] == "tki-bench demo"
    assert set(doc) >= {"machine", "versions", "git", "timestamp"}
    assert to_jsonable({1: (np.int64(2),)}) == {"1": [2]}
    with pytest.raises(ValueError):
        write_result(tmp_path, "demo", "../x", {})


def test_markdown_table():
    md = markdown_table(["name", "value"], [["a|b", 1234567], ["c", 0.123456]])
    lines = md.splitlines()
    assert lines[0].startswith("| name") and lines[1].startswith("| :---")
    assert "a\\|b" in lines[2] and "1,234,567" in lines[2] and "0.12" in lines[3]
    assert all(line.count("|") - line.count("\\|") == 3 for line in lines)
    with pytest.raises(ValueError):
        markdown_table(["a"], [[1, 2]])
