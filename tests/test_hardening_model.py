"""Hardening of model loading, embedding and image folders.

Reproduces issue 11's findings on b391247: a swapped ``model.onnx`` beside the original ``tki.json`` loaded and
searched with exit 0; an artifact ``file`` of ``../x`` or ``/etc/passwd`` was opened; ``batch_size=10**8``
raised numpy's out-of-memory error; a 16-bit PNG became all white; a PNG whose data stops after 10 of 4,000
rows embedded as a black image; a FIFO given as an image path hung the call.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime_fixtures import (
    TINY_SIZE,
    build_hostile_entries,
    copy_tree_sample,
    make_tiny_export,
    pacs_sample,
    png_rows_cut,
    run_tki,
    tiny_reference,
)
from runtime_fixtures import one_error_line as _one_error_line
from tki_sdk.common.errors import EXIT_DAMAGED
from tki_sdk.common.imagefolders import SkippedEntry, list_images
from tki_sdk.runtime.engine import embedder as embedder_mod
from tki_sdk.runtime.engine.artifact_check import ArtifactCheckError
from tki_sdk.runtime.engine.embedder import Embedder
from tki_sdk.runtime.engine.images import ImageLoadError, load_image
from tki_sdk.common.model_metadata import PreprocessConfig
from tki_sdk.runtime.engine.preprocess import Preprocessor


def one_error_line(err: str, prog: str) -> str:
    """The one error line; these commands print a ``model: ...`` line before it."""
    return _one_error_line(err, prog, ignore_model_line=True)


def _edit_tki_json(folder: Path, fn) -> None:
    p = folder / "tki.json"
    d = json.loads(p.read_text())
    fn(d)
    p.write_text(json.dumps(d))


# ------------------------------------------------------------------------------------------ tampered exports
@pytest.fixture
def exports(tmp_path):
    a, wa = make_tiny_export(tmp_path / "a", seed=0)
    b, _ = make_tiny_export(tmp_path / "b", seed=1)  # same architecture, other weights: same file size
    wide, _ = make_tiny_export(tmp_path / "wide", seed=2, dim=32)
    return a, b, wide, wa


def test_swapped_model_file_is_refused(exports):
    a, b, wide, wa = exports
    shutil.copyfile(b / "model.onnx", a / "model.onnx")
    with pytest.raises(ArtifactCheckError, match=r"model\.onnx.*sha256") as e:
        Embedder(a)
    assert "\n" not in str(e.value) and "re-export" in str(e.value)
    # the opt-out checks the size only, and says so
    emb = Embedder(a, verify="size")
    assert emb.verified == "size (sha256 skipped)"
    shutil.copyfile(wide / "model.onnx", a / "model.onnx")
    with pytest.raises(ArtifactCheckError, match=r"model\.onnx.*bytes"):
        Embedder(a, verify="size")


def test_good_export_loads_and_says_what_was_verified(exports):
    a, _, _, wa = exports
    emb = Embedder(a)
    assert emb.verified == "sha256"
    x = np.random.default_rng(0).standard_normal((3, 3, TINY_SIZE, TINY_SIZE)).astype(np.float32)
    np.testing.assert_allclose(emb.embed_pixels(x), tiny_reference(x, wa), atol=1e-5)
    with pytest.raises(ValueError, match="verify"):
        Embedder(a, verify="maybe")


@pytest.mark.parametrize("file", ["../b/model.onnx", "sub/../../b/model.onnx", "/etc/passwd", "", "."])
def test_artifact_paths_must_stay_inside_the_model_folder(exports, file):
    a, b, _, _ = exports
    _edit_tki_json(a, lambda d: d["artifacts"]["fp32"].update(file=file))
    for verify in ("sha256", "size"):
        with pytest.raises((ArtifactCheckError, ValueError)) as e:
            Embedder(a, verify=verify)
        assert "inside" in str(e.value) or "no 'file'" in str(e.value), str(e.value)


def test_tampered_exports_through_the_cli(exports, tmp_path, pacs_dir, capsys):
    a, b, _, _ = exports
    imgs = copy_tree_sample(pacs_sample(pacs_dir, per_class=1, domains=("photo",)), pacs_dir, tmp_path / "imgs")
    rc, _, err = run_tki(["embed", "--model", a, "--images", tmp_path / "imgs", "--out", tmp_path / "g"], capsys)
    assert rc == 0, err
    shutil.copyfile(b / "model.onnx", a / "model.onnx")
    rc, out, err = run_tki(["search", "--gallery", tmp_path / "g", "--model", a, "--image", imgs[0]], capsys)
    assert rc == EXIT_DAMAGED and "model.onnx" in one_error_line(err, "tki search"), err
    rc, out, err = run_tki(["info", "--verify", a], capsys)
    assert rc == EXIT_DAMAGED and "model.onnx" in one_error_line(err, "tki info")
    _edit_tki_json(a, lambda d: d["artifacts"]["fp32"].update(file="/etc/passwd"))
    rc, out, err = run_tki(["search", "--gallery", tmp_path / "g", "--model", a, "--image", imgs[0]], capsys)
    assert rc == EXIT_DAMAGED and "inside" in one_error_line(err, "tki search")


# ------------------------------------------------------------------------------------------ batch sizes
def test_batch_size_bounds(exports, pacs_dir):
    a, _, _, wa = exports
    emb = Embedder(a, threads=1)
    top = embedder_mod.MAX_BATCH_SIZE
    with pytest.raises(ValueError, match=f"at most {top:,}"):
        emb.embed_images(pacs_sample(pacs_dir, per_class=1)[:2], batch_size=100_000_000)
    res = emb.embed_images(pacs_sample(pacs_dir, per_class=1)[:2], batch_size=top)
    assert len(res) == 2
    # embed_pixels takes any N and runs it in chunks of at most MAX_BATCH_SIZE
    n = top + 5
    x = np.random.default_rng(1).standard_normal((n, 3, TINY_SIZE, TINY_SIZE)).astype(np.float32)
    calls: list[int] = []
    run = emb._run
    emb._run = lambda chunk: calls.append(chunk.shape[0]) or run(chunk)  # count the model calls
    out = emb.embed_pixels(x)
    assert max(calls) <= top and sum(calls) == n
    np.testing.assert_allclose(out[-7:], tiny_reference(x[-7:], wa), atol=1e-5)


def test_cli_batch_size_extreme_is_one_line(exports, tmp_path, pacs_dir, capsys):
    a = exports[0]
    copy_tree_sample(pacs_sample(pacs_dir, per_class=1, domains=("photo",)), pacs_dir, tmp_path / "imgs")
    rc, _, err = run_tki(["embed", "--model", a, "--images", tmp_path / "imgs", "--out", tmp_path / "g",
                      "--batch-size", 100_000_000], capsys)
    assert rc == 2 and "batch" in one_error_line(err, "tki embed")
    assert not (tmp_path / "g").exists()


# ------------------------------------------------------------------------------------------ images
def _png(a: np.ndarray) -> bytes:
    b = io.BytesIO()
    Image.fromarray(a).save(b, "PNG")
    return b.getvalue()


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    g16 = np.linspace(0, 65535, 48 * 64).reshape(48, 64).astype(np.uint16)
    g8 = np.round(g16 / 257.0).astype(np.uint8)
    for fmt in ("PNG", "TIFF"):
        b = io.BytesIO()
        Image.fromarray(g16).save(b, fmt)
        im = load_image(b.getvalue())
        assert im.mode == "L", fmt
        assert np.abs(np.asarray(im).astype(int) - g8).max() <= 1, fmt
    pre = Preprocessor(PreprocessConfig.from_dict({"size": [32, 32], "interpolation": "bicubic", "resize_mode": "shortest"}))
    b = io.BytesIO()
    Image.fromarray(g16).save(b, "PNG")
    got = pre.process(b.getvalue())
    ref = pre.process(_png(g8))
    np.testing.assert_allclose(got, ref, atol=0.02)
    assert got.std() > 0.5  # a gradient, not a white page
    # a 16-bit PIL image given directly is converted the same way
    np.testing.assert_allclose(pre(Image.open(io.BytesIO(b.getvalue()))), ref, atol=0.02)


def test_png_whose_rows_stop_early_is_reported():
    with pytest.raises(ImageLoadError, match="truncated") as e:
        load_image(png_rows_cut(40, 4000, rows=10))
    assert "10 of 4000 rows" in e.value.reason
    im = load_image(png_rows_cut(40, 300, rows=300))  # the same construction, complete: decodes
    assert np.asarray(im).mean() == 200
    rng = np.random.default_rng(0)
    cut = _png(rng.integers(0, 255, (300, 40, 3), dtype=np.uint8))
    with pytest.raises(ImageLoadError, match="truncated"):
        load_image(cut[: len(cut) // 2])  # cut inside the data: Pillow's own truncation check


def test_fifo_or_device_given_as_an_image_is_refused_not_opened(tmp_path):
    os.mkfifo(tmp_path / "x.jpg")
    os.symlink("/dev/zero", tmp_path / "zero.png")
    code = textwrap.dedent(f"""
        import tki_sdk.runtime
        from tki_sdk.runtime.engine.images import ImageLoadError, load_image
        for name in ("x.jpg", "zero.png"):
            try:
                load_image({str(tmp_path)!r} + "/" + name)
            except ImageLoadError as e:
                print(name, e.reason)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = dict(ln.split(" ", 1) for ln in r.stdout.splitlines())
    assert "FIFO" in lines["x.jpg"] and "device" in lines["zero.png"], r.stdout


# ------------------------------------------------------------------------------------------ hostile folders
@pytest.fixture
def hostile_entries(pacs_dir):
    """The entries corpus in a world-readable folder (so a non-root child can walk it); removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix="tki-hostile-"))
    d.chmod(0o755)
    jpg = next(p for p in pacs_sample(pacs_dir, per_class=1) if p.suffix == ".jpg")
    try:
        yield d, build_hostile_entries(d / "h", jpg.read_bytes())
    finally:
        (d / "h" / "locked").chmod(0o755)
        shutil.rmtree(d, ignore_errors=True)


def test_walker_skips_every_hostile_entry_with_a_reason(hostile_entries):
    d, expect = hostile_entries
    root = d / "h"
    skipped: list[SkippedEntry] = []
    found = [f.rel for f in list_images(root, skipped)]
    reasons = {s.path.relative_to(root).as_posix(): s.reason for s in skipped}
    readable_locked = os.geteuid() == 0  # root reads a mode-000 folder
    want = {k: v for k, v in expect.items() if not (k == "locked" and readable_locked)}
    assert set(reasons) == set(want), reasons
    for name, word in want.items():
        assert word in reasons[name], (name, reasons[name])
    assert found == (["good.jpg", "locked/inside.jpg"] if readable_locked else ["good.jpg"])


def test_unreadable_folder_is_reported_to_a_non_root_user(hostile_entries):
    d, _ = hostile_entries
    if os.geteuid() != 0:
        pytest.skip("covered by test_walker_skips_every_hostile_entry_with_a_reason as a non-root user")
    code = textwrap.dedent(f"""
        import os
        from tki_sdk.common.imagefolders import list_images
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)  # from here on: an ordinary user, for whom mode 000 means unreadable
        skipped = []
        files = list_images({str(d / 'h')!r}, skipped)
        print([f.rel for f in files])
        for s in skipped:
            print(s.path.name, "|", s.reason)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "['good.jpg']" in r.stdout and "locked | cannot list folder (Permission denied)" in r.stdout, r.stdout


def test_search_images_reports_skipped_entries(hostile_entries, tmp_path, pacs_dir, capsys):
    d, expect = hostile_entries
    export, _ = make_tiny_export(tmp_path / "export")
    copy_tree_sample(pacs_sample(pacs_dir, per_class=1, domains=("photo",)), pacs_dir, tmp_path / "imgs")
    rc, _, err = run_tki(["embed", "--model", export, "--images", tmp_path / "imgs", "--out", tmp_path / "g"], capsys)
    assert rc == 0, err
    rc, out, err = run_tki(["search", "--gallery", tmp_path / "g", "--model", export, "--images", d / "h", "-k", 2],
                       capsys)
    assert rc == 0, err
    lines = [ln for ln in err.splitlines() if ln.startswith("tki search: skipped")]
    for name, word in expect.items():
        if name == "locked" and os.geteuid() == 0:
            continue
        assert any(f"/{name}:" in ln and word in ln for ln in lines), (name, lines)
    assert out.splitlines()[0].endswith("good.jpg")
