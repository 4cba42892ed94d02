"""``tki embed`` against the hostile probe's findings that concern it: two runs creating one new gallery, a
folder of entries that must never be opened, and an absurd ``--batch-size`` (issue: hardening)."""
from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime_fixtures import build_hostile_entries, make_tiny_export

from tki_sdk.cli.runtime import main


def _jpeg(seed: int) -> bytes:
    rgb = (np.random.default_rng(seed).random((40, 48, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG")
    return buf.getvalue()


def _images(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"{i:03d}.jpg").write_bytes(_jpeg(i))
    return folder


def test_batch_size_beyond_the_bound_is_one_line_before_any_work(tmp_path, capsys):
    model, _ = make_tiny_export(tmp_path / "m")
    images = _images(tmp_path / "img", 2)
    code = main(["embed", "--model", str(model), "--images", str(images), "--out", str(tmp_path / "g"),
                 "--batch-size", "100000000"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--batch-size must be at most" in err[0], err
    assert not (tmp_path / "g").exists()


def test_hostile_entries_are_reported_and_never_opened(tmp_path, capsys):
    model, _ = make_tiny_export(tmp_path / "m")
    images = tmp_path / "img"
    expected = build_hostile_entries(images, _jpeg(0))
    try:
        code = main(["embed", "--model", str(model), "--images", str(images), "--out", str(tmp_path / "g")])
    finally:
        (images / "locked").chmod(0o755)
    err = capsys.readouterr().err
    assert code == 0, err  # good.jpg (and, as root, locked/inside.jpg) indexed; the run did not hang
    for rel in ("fifo.jpg", "sock.png", "a.jpg", "b.jpg", "dangling.jpg", "device.jpg"):
        assert rel in err, (rel, err)
    assert "\x1b" not in err
    assert set(expected) >= {"fifo.jpg", "sock.png"}


def _blocked_on_flock(pid: int) -> bool:
    try:
        return "lock" in Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/wchan").exists(), reason="needs Linux /proc/<pid>/wchan")
@pytest.mark.parametrize("no_wait", [False, True])
def test_two_runs_creating_one_gallery_one_writes_the_other_waits_or_refuses(tmp_path, no_wait):
    """Both runs start while the test holds the gallery folder's save lock: one run holds the writer lock and
    blocks on its save; the other waits for the writer lock (then finds every file unchanged) or, with
    --no-wait, refuses in one line. Either way one gallery version, 40 items, nothing replaced."""
    import fcntl
    import os

    model, _ = make_tiny_export(tmp_path / "m")
    images = _images(tmp_path / "img", 40)
    out = tmp_path / "g"
    out.mkdir()
    lock = os.open(out / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(lock, fcntl.LOCK_EX)
    cmd = [sys.executable, "-m", "tki_sdk.cli.runtime", "embed", "--model", str(model), "--images", str(images),
           "--out", str(out), "--batch-size", "4"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs = [first]
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not _blocked_on_flock(first.pid):
            assert first.poll() is None, first.communicate()
            time.sleep(0.1)
        assert _blocked_on_flock(first.pid), "the first run never reached its save"
        second = subprocess.Popen(cmd + (["--no-wait"] if no_wait else []), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        procs.append(second)
        if no_wait:
            second.wait(timeout=120)
        else:
            while time.time() < deadline and not _blocked_on_flock(second.pid):
                assert second.poll() is None, second.communicate()
                time.sleep(0.1)
            assert _blocked_on_flock(second.pid), "the second run never waited"
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        os.close(lock)
    errs = [p.communicate(timeout=120)[1] for p in procs]
    results = [(p.returncode, err) for p, err in zip(procs, errs)]
    assert [rc for rc, _ in results] == ([0, 2] if no_wait else [0, 0]), results
    if no_wait:
        loser = [ln for ln in results[1][1].splitlines() if "error" in ln]
        assert len(loser) == 1 and "being written by another run" in loser[0], loser
    else:
        assert "waiting for it to finish" in results[1][1] and "unchanged 40" in results[1][1], results[1][1]
    from tki_sdk.runtime.index.gallery import Gallery

    g = Gallery.load(out)
    assert len(g) == 40 and len(list(out.glob("v-*"))) == 1
