"""tki-export command line: --help, each bad input (one line, exit 2), a full run with its summary table, and a
parity failure (exit 1 naming the artifact; --allow-parity-failure keeps it with a warning)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from export_fixtures import image_folder
from tki_sdk.cli import export as cli
from tki_sdk.export.tensorrt import tensorrt_available
from tki_sdk.common.model_metadata import ModelMetadata


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("tki-export: error:")
    return lines[0]


def test_help_has_examples():
    r = subprocess.run([sys.executable, "-m", "tki_sdk.cli.export", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    assert "examples:" in r.stdout and "--calib-images" in r.stdout and "--head none --model" in r.stdout


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    return image_folder(tmp_path_factory.mktemp("cli_img"), None, n=6)


def test_missing_checkpoint(tmp_path, capsys):
    code, _, err = run(["--checkpoint", tmp_path / "nope", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "does not exist" in one_line(err)


def test_folder_that_is_not_a_checkpoint(tmp_path, capsys):
    (tmp_path / "ck").mkdir()
    code, _, err = run(["--checkpoint", tmp_path / "ck", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "not a tki checkpoint" in one_line(err)


def test_unknown_precision(tiny_checkpoint, tmp_path, capsys):
    code, _, err = run(["--checkpoint", tiny_checkpoint, "--out", tmp_path / "o", "--precision", "fp32,int4"], capsys)
    line = one_line(err)
    assert code == 2 and "int4" in line and "fp16" in line


def test_unwritable_output(tiny_checkpoint, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(["--checkpoint", tiny_checkpoint, "--out", blocker / "out"], capsys)
    assert code == 2 and "cannot write to output folder" in one_line(err)


def test_calibration_folder_without_images(tiny_checkpoint, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    code, _, err = run(["--checkpoint", tiny_checkpoint, "--out", tmp_path / "o", "--calib-images", empty], capsys)
    assert code == 2 and "holds no images" in one_line(err)
    code, _, err = run(["--checkpoint", tiny_checkpoint, "--out", tmp_path / "o", "--calib-images", tmp_path / "x"], capsys)
    assert code == 2 and "does not exist" in one_line(err)


def test_head_requirements(tmp_path, capsys):
    code, _, err = run(["--out", tmp_path / "o"], capsys)
    assert code == 2 and "--checkpoint" in one_line(err)
    code, _, err = run(["--head", "none", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "--model" in one_line(err)
    code, _, err = run(["--head", "none", "--model", "No-Such-Net", "--out", tmp_path / "o", "--no-progress"], capsys)
    assert code == 2 and "unknown model" in one_line(err)


def test_bad_numbers_and_missing_out(tiny_checkpoint, tmp_path, capsys):
    code, _, err = run(["--checkpoint", tiny_checkpoint, "--out", tmp_path / "o", "--opset", "12"], capsys)
    assert code == 2 and "--opset 12" in one_line(err)
    code, _, err = run(["--checkpoint", tiny_checkpoint, "--out", tmp_path / "o", "--max-batch", "0"], capsys)
    assert code == 2 and "--max-batch" in one_line(err)
    code, _, err = run(["--checkpoint", tiny_checkpoint], capsys)
    assert code == 2 and "--out" in one_line(err)


@pytest.mark.skipif(tensorrt_available() is not None, reason="tensorrt is installed here")
def test_tensorrt_missing_is_one_clear_line(tiny_checkpoint, tmp_path, capsys):
    code, _, err = run(["--checkpoint", tiny_checkpoint, "--out", tmp_path / "o", "--tensorrt"], capsys)
    line = one_line(err)
    assert code == 2 and "TensorRT is not installed" in line and "pip install 'tki-sdk[gpu]'" in line
    assert not (tmp_path / "o" / "tki.json").exists()


def test_full_run_prints_summary(tiny_checkpoint, tmp_path, calib, capsys):
    out = tmp_path / "export"
    code, stdout, err = run(["--checkpoint", tiny_checkpoint, "--out", out, "--precision", "fp32,int8",
                             "--calib-images", calib, "--calib-count", 4, "--val-count", 2, "--int8-scheme", "dynamic",
                             "--no-progress"], capsys)
    assert code == 0, err
    lines = stdout.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("artifact"))
    header = lines[start]
    for col in ("size", "min cosine", "ms/image"):
        assert col in header
    table = lines[start + 2: lines.index("", start)]
    rows = {ln.split()[0]: ln for ln in table}
    assert "int8 candidates: dynamic: min cosine" in stdout
    assert set(rows) == {"fp32", "int8", "torch", "text_fp32"}  # the text encoder is exported by default
    assert "pass" in rows["fp32"] and "int8 (dynamic)" in rows["int8"]
    n_files = len(list(calib.iterdir()))
    assert (f"images (calibration / validation): {calib} (--calib-images; {n_files} images; "
            "4 for calibration, 2 for validation)") in stdout
    md = ModelMetadata.load(out)
    assert set(md.artifacts) == {"fp32", "int8"} and md.artifacts["int8"]["scheme"] == "dynamic"
    c = md.artifacts["int8"]["calibration"]
    assert (c["folder"], c["origin"], c["files"], c["count"]) == (str(calib), "--calib-images", n_files, 4)
    assert c["used_by"].startswith("none")  # dynamic int8 reads no calibration data
    assert not (out / "model.fp16.onnx").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".tki-export-")]  # temporary files removed


def test_parity_failure_exits_1_and_names_the_artifact(tiny_checkpoint, tmp_path, calib, capsys, monkeypatch):
    from tki_sdk.export import validate

    monkeypatch.setitem(validate.THRESHOLDS, "int8", 0.9999999)  # int8 cannot reach this
    out = tmp_path / "strict"
    argv = ["--checkpoint", tiny_checkpoint, "--out", out, "--precision", "fp32,int8", "--calib-images", calib,
            "--calib-count", 4, "--val-count", 2, "--int8-scheme", "dynamic", "--no-progress", "--no-timing",
            "--no-text"]
    code, _, err = run(argv, capsys)
    assert code == 1
    failed = [ln for ln in err.splitlines() if "FAILED" in ln]
    assert len(failed) == 1
    assert "int8 (model.int8.onnx)" in failed[0] and "'embedding'" in failed[0] and "0.9999999" in failed[0]
    assert not (out / "tki.json").exists()
    rep = json.loads((out / "parity.json").read_text())
    assert rep["passed"] is False and rep["artifacts"]["int8"]["pass"] is False and rep["artifacts"]["fp32"]["pass"]

    code, _, err = run([*argv, "--allow-parity-failure"], capsys)
    assert code == 0
    assert any("warning" in ln and "int8" in ln for ln in err.splitlines())
    md = ModelMetadata.load(out)
    assert md.artifacts["int8"]["parity_pass"] is False and md.artifacts["fp32"]["parity_pass"] is True


def test_calibration_folder_with_only_corrupt_images(tiny_checkpoint, tmp_path, calib, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    good = next(iter(sorted(calib.iterdir())))
    (bad / "a.png").write_bytes(good.read_bytes()[:40])  # truncated: the header is there, the pixels are not
    (bad / "b.jpg").write_bytes(b"not a jpeg at all")
    (bad / "c.png").write_bytes(b"")
    code, _, err = run(["--checkpoint", tiny_checkpoint, "--out", tmp_path / "o", "--calib-images", bad], capsys)
    line = one_line(err)
    assert code == 2 and "none of the 3 images" in line and "can be decoded" in line
    assert not (tmp_path / "o" / "tki.json").exists()


@pytest.mark.parametrize("exc", [
    OSError(28, "No space left on device", "out/model.onnx"),
    PermissionError(13, "Permission denied", "out/model.onnx"),
    "noimages",
    RuntimeError("first line of a long error\nsecond line\nthird"),
])
def test_errors_during_export_are_one_line(tiny_checkpoint, tmp_path, calib, capsys, monkeypatch, exc):
    from tki_sdk.export import pipeline
    from tki_sdk.export.calibration import NoImagesError

    if exc == "noimages":
        exc = NoImagesError("none of the 3 images under x could be read (first: a.png: truncated)")

    def fail(*a, **k):
        raise exc

    monkeypatch.setattr(pipeline, "run_export", fail)
    code, _, err = run(["--checkpoint", tiny_checkpoint, "--out", tmp_path / "o", "--calib-images", calib,
                        "--no-progress"], capsys)
    line = one_line(err)
    assert code == 2 and "Traceback" not in err
    first = exc.strerror if isinstance(exc, OSError) else str(exc).splitlines()[0]
    assert first in line and type(exc).__name__ in line
    if isinstance(exc, OSError):
        assert "out/model.onnx" in line
