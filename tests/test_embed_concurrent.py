"""One writer per gallery: concurrent ``tki embed`` / ``tki index`` runs over one gallery lose nothing, a
save based on a version that is no longer current is refused (compare-and-swap), readers never wait.

References: the files each run lists (its manifest) against the keys and metadata of the final gallery
(``item_key`` of each path, computed here); real subprocesses; the race is forced, not hoped for: the test
holds the gallery's save lock until every run is blocked on a lock, so without a run-long writer lock every
run would have loaded the same version before any saves.
"""
from __future__ import annotations

import fcntl
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime_fixtures import make_tiny_export
from tki_sdk.cli.runtime import main
from tki_sdk.runtime import Gallery
from tki_sdk.runtime.index.store import StaleVersionError, current_version, writer_lock
from tki_sdk.runtime.pipeline.embed_run import EmbedJob, run_job
from tki_sdk.runtime.pipeline.errors import GalleryChangedError
from tki_sdk.runtime.pipeline.ingest import item_key
from tki_sdk.runtime.pipeline.shards import ShardInfo

pytestmark = pytest.mark.skipif(not Path("/proc/self/wchan").exists(), reason="needs Linux /proc/<pid>/wchan")


def _jpeg(seed: int) -> bytes:
    rgb = (np.random.default_rng(seed).random((40, 48, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG")
    return buf.getvalue()


def _blocked_on_flock(pid: int) -> bool:
    try:
        return "lock" in Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False


def _manifest(path: Path, rels: list[str]) -> Path:
    path.write_text("path\n" + "".join(f"{r}\n" for r in rels))
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_export(tmp_path_factory.mktemp("m") / "tiny")[0]


def _cmd(model: Path, images: Path, out: Path, manifest: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tki_sdk.cli.runtime", "embed", "--model", str(model), "--images", str(images),
            "--out", str(out), "--manifest", str(manifest), "--batch-size", "4", "--threads", "1",
            "--target-recall", "0", *extra]


@pytest.mark.parametrize("runs", [2, 3])
def test_concurrent_incremental_runs_keep_every_listed_file_once(model, tmp_path, runs):
    images = tmp_path / "img"
    images.mkdir()
    base = [f"base/{i:03d}.jpg" for i in range(6)]
    extra = [[f"run{r}/{i:03d}.jpg" for i in range(10)] for r in range(runs)]
    for i, rel in enumerate(base + sum(extra, [])):
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        (images / rel).write_bytes(_jpeg(i))
    out = tmp_path / "g"
    rc = subprocess.run(_cmd(model, images, out, _manifest(tmp_path / "base.csv", base)), capture_output=True,
                        text=True, timeout=120)
    assert rc.returncode == 0, rc.stderr
    lock = os.open(out / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(lock, fcntl.LOCK_EX)  # no save can publish until every run is blocked on a lock
    procs = [subprocess.Popen(_cmd(model, images, out, _manifest(tmp_path / f"m{r}.csv", base + extra[r])),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(runs)]
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not all(_blocked_on_flock(p.pid) for p in procs):
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.1)
        assert all(_blocked_on_flock(p.pid) for p in procs), "the runs never blocked"
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        os.close(lock)
        results = [(p.wait(timeout=180), p.communicate()[1]) for p in procs]
    assert [rc for rc, _ in results] == [0] * runs, results
    assert sum("waiting for it to finish" in err for _, err in results) == runs - 1, results
    g = Gallery.load(out)
    listed = base + sum(extra, [])
    keys = g.keys()
    assert np.unique(keys).size == keys.size == len(listed)
    assert sorted(keys.tolist()) == sorted(item_key(r) for r in listed)
    assert sorted(m["rel"] for m in g.get_metadata(keys)) == sorted(listed)
    assert not (out / "embed-run").exists()


def test_no_wait_refuses_in_one_line_while_another_run_writes(model, tmp_path, capsys):
    images = tmp_path / "img"
    images.mkdir()
    (images / "a.jpg").write_bytes(_jpeg(1))
    out = tmp_path / "g"
    argv = ["embed", "--model", str(model), "--images", str(images), "--out", str(out), "--target-recall", "0"]
    assert main(argv) == 0
    before = current_version(out)
    (images / "b.jpg").write_bytes(_jpeg(2))
    with writer_lock(out):
        capsys.readouterr()
        code = main([*argv, "--no-wait"])
        err = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
        assert code == 2 and len(err) == 1 and "being written by another run" in err[0], err
        # readers never wait on a writer
        assert len(Gallery.load(out)) == 1 and len(Gallery.view(out)) == 1
        code = main(["index", "--from-parquet", str(tmp_path), "--gallery", str(out), "--no-wait"])
        assert code == 2
    assert current_version(out) == before and len(Gallery.load(out)) == 1
    assert main(argv) == 0 and len(Gallery.load(out)) == 2


def test_a_save_based_on_a_replaced_version_is_refused(tmp_path):
    out = tmp_path / "g"
    g = Gallery(4, exact=True)
    g.add([5], np.eye(4, dtype=np.float32)[:1])
    g.save(out)
    base = current_version(out)
    mine, theirs = Gallery.load(out), Gallery.load(out)
    theirs.add([9], np.eye(4, dtype=np.float32)[1:2])
    theirs.save(out, expect=base)
    now = current_version(out)
    assert now != base
    mine.add([7], np.eye(4, dtype=np.float32)[2:3])
    with pytest.raises(StaleVersionError) as e:
        mine.save(out, expect=base)
    assert "\n" not in str(e.value) and "run it again" in str(e.value)
    assert current_version(out) == now and sorted(Gallery.load(out).keys().tolist()) == [5, 9]


def test_the_pipeline_refuses_its_save_when_the_gallery_changed_under_it(tmp_path):
    """A writer that ignores the writer lock saves while the job embeds: the job's commit is refused
    (GalleryChangedError, exit 1) and the other writer's version stays live."""
    images = tmp_path / "img"
    images.mkdir()
    for i in range(3):
        (images / f"{i}.jpg").write_bytes(_jpeg(i))
    out = tmp_path / "g"
    info = ShardInfo(model_fingerprint="f" * 64, embedding_dim=4)

    def new_gallery() -> Gallery:
        return Gallery(4, exact=True, model_fingerprint="f" * 64)

    rng = np.random.default_rng(0)

    def engine(todo, checkpoints):
        for s in todo:
            checkpoints.add(s, rng.standard_normal(4).astype(np.float32), None)
        checkpoints.flush()
        return len(todo)

    job = EmbedJob(images=images, out=out)
    run_job(job, info, engine, new_gallery)
    (images / "new.jpg").write_bytes(_jpeg(7))

    def meddling_engine(todo, checkpoints):
        other = Gallery.load(out)
        other.add([123], np.ones((1, 4), dtype=np.float32))
        other.save(out)  # no writer lock: a careless library user
        return engine(todo, checkpoints)

    with pytest.raises(GalleryChangedError) as e:
        run_job(job, info, meddling_engine, new_gallery)
    assert e.value.code == 1 and "changed while this run worked" in str(e.value)
    assert 123 in Gallery.load(out).keys().tolist() and len(Gallery.load(out)) == 4


def test_readers_do_not_wait_for_a_save_that_is_writing(tmp_path):
    """A save blocked inside its write (before the swap) holds no lock a reader needs: loads and views of the
    live version complete meanwhile, and see the old version until the swap."""
    import threading

    from tki_sdk.runtime.index.store import save_version

    out = tmp_path / "g"
    g = Gallery(4, exact=True)
    g.add([5], np.eye(4, dtype=np.float32)[:1])
    g.save(out)
    new = Gallery.load(out)
    new.add([6], np.eye(4, dtype=np.float32)[1:2])
    inside, release = threading.Event(), threading.Event()

    def slow_write(d):
        new._write_version(d)
        inside.set()
        release.wait(60)

    saver = threading.Thread(target=lambda: save_version(out, slow_write))
    saver.start()
    try:
        assert inside.wait(60), "the save never reached its write"
        seen: list[int] = []
        reader = threading.Thread(target=lambda: seen.extend([len(Gallery.load(out)), len(Gallery.view(out))]))
        reader.start()
        reader.join(60)
        assert not reader.is_alive() and seen == [1, 1], seen
    finally:
        release.set()
        saver.join(60)
    assert len(Gallery.load(out)) == 2
