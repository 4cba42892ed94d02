"""Hardening of ``tki-export --out``: a folder that is not an export is refused unless ``--overwrite``, which then
replaces only files tki-export writes; staging folders of killed exports are cleaned.

On b391247 an ``--out`` holding a user's ``model.int8.onnx`` / ``model.fp16.onnx`` / notes exited 0 after
deleting both model files, and a killed export's ``.tki-export-*`` folder stayed forever.
"""
from __future__ import annotations

import fcntl
import os
import time

import pytest

from export_fixtures import image_folder
from tki_sdk.cli import export as cli
from tki_sdk.common.model_metadata import ModelMetadata


@pytest.fixture(scope="module")
def calib(tmp_path_factory, pacs_dir):
    return image_folder(tmp_path_factory.mktemp("calib") / "imgs", pacs_dir, n=6)


def export(tiny_checkpoint, out, calib, capsys, *extra, text=False):
    """``tki-export`` of the tiny checkpoint (fp32; the text artifact only when ``text``: these tests are about
    the image export's files, and the text graph's export triples the time)."""
    capsys.readouterr()
    extra = extra if text else (*extra, "--no-text")
    code = cli.main([str(a) for a in ["--checkpoint", tiny_checkpoint, "--out", out, "--precision", "fp32",
                                      "--calib-images", calib, "--val-count", 2, "--no-progress", "--no-timing",
                                      *extra]])
    out_, err = capsys.readouterr()
    return code, out_, err


def _user_folder(d):
    d.mkdir()
    files = {"model.int8.onnx": b"my own int8 model", "model.fp16.onnx": b"my own fp16 model",
             "model.onnx": b"my own fp32 model", "notes.txt": b"do not delete"}
    for k, v in files.items():
        (d / k).write_bytes(v)
    return files


def test_out_that_is_not_an_export_is_refused(tiny_checkpoint, tmp_path, calib, capsys):
    out = tmp_path / "mine"
    files = _user_folder(out)
    code, _, err = export(tiny_checkpoint, out, calib, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "--overwrite" in lines[0] and "not an export" in lines[0], err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files


def test_overwrite_replaces_only_what_tki_export_writes(tiny_checkpoint, tmp_path, calib, capsys):
    out = tmp_path / "mine"
    _user_folder(out)
    (out / "model.plan.notes").write_text("mine too")
    code, _, err = export(tiny_checkpoint, out, calib, capsys, "--overwrite", text=True)
    assert code == 0, err
    names = {p.name for p in out.iterdir()}
    assert names == {"model.onnx", "tki.json", "parity.json", "notes.txt", "model.plan.notes",
                     "text.onnx", "bpe_simple_vocab_16e6.txt.gz", "domain_vectors.npy"}, names
    assert (out / "notes.txt").read_bytes() == b"do not delete"
    md = ModelMetadata.load(out)
    assert set(md.artifacts) == {"fp32"}
    from tki_sdk.runtime import Embedder

    Embedder(out)  # the new model.onnx matches tki.json (sha256 verified)


def test_reexport_into_an_export_keeps_files_it_did_not_write(tiny_checkpoint, tmp_path, calib, capsys):
    out = tmp_path / "exp"
    code, _, err = export(tiny_checkpoint, out, calib, capsys)
    assert code == 0, err
    (out / "model.fp16.onnx").write_bytes(b"dropped here by hand; tki.json does not list it")
    (out / "readme.md").write_text("hi")
    code, _, err = export(tiny_checkpoint, out, calib, capsys)
    assert code == 0, err
    assert (out / "model.fp16.onnx").read_bytes().startswith(b"dropped here")
    assert (out / "readme.md").exists()


def test_stale_staging_folders_are_cleaned_live_ones_kept(tiny_checkpoint, tmp_path, calib, capsys):
    out = tmp_path / "exp"
    out.mkdir()
    dead = out / ".tki-export-dead"  # killed export: lock file present, nobody holds it
    dead.mkdir()
    (dead / ".lock").touch()
    (dead / "model.onnx").write_bytes(b"\0" * 4096)
    live = out / ".tki-export-live"  # a running export: holds its lock
    live.mkdir()
    fd = os.open(live / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    old = out / ".tki-export-old"  # no lock file (older tki-export), last touched two hours ago
    old.mkdir()
    (old / "x").write_bytes(b"x")
    two_hours = time.time() - 7200
    os.utime(old, (two_hours, two_hours))
    young = out / ".tki-export-young"  # no lock file yet, just created: may be a starting export
    young.mkdir()
    try:
        code, _, err = export(tiny_checkpoint, out, calib, capsys)
        assert code == 0, err
        left = sorted(p.name for p in out.iterdir() if p.name.startswith(".tki-export-"))
        assert left == [".tki-export-live", ".tki-export-young"], left
    finally:
        os.close(fd)
