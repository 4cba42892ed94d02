"""Incremental and resumable ``tki embed`` (one process), keys from paths, ``tki index --from-parquet``.

References: keys against hashlib directly; vectors against the tiny model in float64 numpy
(``tiny_reference``); incremental and resumed galleries against a fresh, uninterrupted build of the same
folder; which files reached the model from the ``TKI_EMBED_TRACE`` log.
"""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from runtime_fixtures import copy_tree_sample, make_tiny_export, pacs_sample, tiny_reference
from tki_sdk.runtime import Gallery, Preprocessor
from tki_sdk.cli.runtime import main
from tki_sdk.runtime.pipeline.embed_run import TRACE_ENV
from tki_sdk.runtime.pipeline.ingest import item_key
from tki_sdk.runtime.pipeline.shards import list_shards, read_shard_info

REPO = Path(__file__).resolve().parents[1]


def assert_same_gallery(a: Path, b: Path, cos_min: float = 0.999999) -> None:
    """Same keys, same metadata, vectors with cosine >= ``cos_min`` (one vector per key)."""
    ga, gb = Gallery.load(a), Gallery.load(b)
    ka, kb = np.sort(ga.keys()), np.sort(gb.keys())
    np.testing.assert_array_equal(ka, kb)
    assert np.unique(ka).size == ka.size
    va, vb = ga.get_vectors(ka), gb.get_vectors(kb)
    cos = np.sum(va * vb, axis=1) / (np.linalg.norm(va, axis=1) * np.linalg.norm(vb, axis=1))
    assert cos.min() >= cos_min, cos.min()
    assert ga.get_metadata(ka) == gb.get_metadata(kb)


def trace_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return make_tiny_export(tmp_path_factory.mktemp("export") / "tiny")


def embed(export_dir: Path, images: Path, out: Path, *extra: str) -> int:
    return main(["embed", "--model", str(export_dir), "--images", str(images), "--out", str(out), "--threads", "1",
                 "--batch-size", "4", *extra])


def test_key_is_the_path_hash_and_the_vectors_the_model(export, pacs_dir, tmp_path):
    export_dir, weights = export
    images = tmp_path / "images"
    copied = copy_tree_sample(pacs_sample(pacs_dir, per_class=2), pacs_dir, images)
    assert embed(export_dir, images, tmp_path / "g") == 0
    g = Gallery.load(tmp_path / "g")
    rels = [p.relative_to(images).as_posix() for p in copied]
    want = {int.from_bytes(hashlib.blake2b(r.encode(), digest_size=8).digest(), "big") >> 1: r for r in rels}
    assert {item_key(r) for r in rels} == set(want)
    assert sorted(int(k) for k in g.keys()) == sorted(want)
    assert all(k < 2**63 for k in want)
    pre = Preprocessor.from_metadata(export_dir)
    keys = np.asarray(sorted(want), dtype=np.uint64)
    metas = g.get_metadata(keys)
    assert [m["rel"] for m in metas] == [want[int(k)] for k in keys]
    ref = tiny_reference(pre.batch([images / m["rel"] for m in metas]), weights)
    np.testing.assert_allclose(g.get_vectors(keys), ref, atol=1e-5)
    st = (images / metas[0]["rel"]).stat()
    assert metas[0]["file"] == {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def test_add_change_delete_touches_exactly_those_and_equals_fresh_build(export, pacs_dir, tmp_path, monkeypatch,
                                                                        capsys):
    export_dir, _ = export
    pool = pacs_sample(pacs_dir, per_class=4, classes=("dog", "horse", "house"))  # 48 files
    images = tmp_path / "images"
    first, later = pool[:30], pool[30:40]
    copy_tree_sample(first, pacs_dir, images)
    out = tmp_path / "g"
    assert embed(export_dir, images, out) == 0

    added = copy_tree_sample(later, pacs_dir, images)
    rels = sorted(p.relative_to(images).as_posix() for p in images.rglob("*.*"))
    old = [r for r in rels if images / r not in added]
    changed, deleted = old[:2], old[-3:]
    for r, donor in zip(changed, pool[40:42]):
        (images / r).write_bytes(donor.read_bytes())  # new content (and size)
    for r in deleted:
        (images / r).unlink()
    trace = tmp_path / "trace.txt"
    monkeypatch.setenv(TRACE_ENV, str(trace))
    capsys.readouterr()
    assert embed(export_dir, images, out, "--prune") == 0
    err = capsys.readouterr().err
    assert "added 10, updated 2, unchanged 25, pruned 3, failed 0" in err
    assert sorted(trace_lines(trace)) == sorted([p.relative_to(images).as_posix() for p in added] + changed)

    monkeypatch.delenv(TRACE_ENV)
    assert embed(export_dir, images, tmp_path / "fresh") == 0
    assert_same_gallery(out, tmp_path / "fresh")
    assert len(Gallery.load(out)) == 37 and not (out / "embed-run").exists()

    # nothing changed: nothing embedded, nothing saved again
    version = (out / "CURRENT").read_text()
    monkeypatch.setenv(TRACE_ENV, str(tmp_path / "trace2.txt"))
    assert embed(export_dir, images, out, "--prune") == 0
    assert trace_lines(tmp_path / "trace2.txt") == [] and (out / "CURRENT").read_text() == version


def test_deleted_files_stay_without_prune_and_hash_ignores_touch(export, pacs_dir, tmp_path, monkeypatch, capsys):
    export_dir, _ = export
    images = tmp_path / "images"
    copied = copy_tree_sample(pacs_sample(pacs_dir, per_class=1), pacs_dir, images)
    out = tmp_path / "g"
    assert embed(export_dir, images, out, "--hash") == 0
    copied[0].unlink()
    st = copied[1].stat()
    os.utime(copied[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same content
    trace = tmp_path / "trace.txt"
    monkeypatch.setenv(TRACE_ENV, str(trace))
    capsys.readouterr()
    assert embed(export_dir, images, out, "--hash") == 0
    err = capsys.readouterr().err
    assert "1 deleted files still indexed (pass --prune" in err and trace_lines(trace) == []
    assert len(Gallery.load(out)) == len(copied)
    # without --hash the touched file counts as changed (size and mtime are the signature)
    capsys.readouterr()
    assert embed(export_dir, images, out, "--prune") == 0
    assert trace_lines(trace) == [copied[1].relative_to(images).as_posix()]
    assert "updated 1" in capsys.readouterr().err and len(Gallery.load(out)) == len(copied) - 1


def _wait_for(cond, timeout: float, proc: subprocess.Popen) -> None:
    t0 = time.monotonic()
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before it could be killed: "
                                 f"{proc.stderr.read()[-2000:] if proc.stderr else ''}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError("no checkpoint appeared in time")
        time.sleep(0.01)


def kill_after_checkpoints(argv: list[str], shard_dir: Path, n_shards: int, env: dict[str, str],
                           timeout: float = 120) -> None:
    """Start ``python -m tki_sdk.cli.runtime <argv>`` in its own process group, SIGKILL the group once
    ``shard_dir`` holds ``n_shards`` shards."""
    proc = subprocess.Popen([sys.executable, "-m", "tki_sdk.cli.runtime", *argv], env=env, cwd=str(REPO),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for(lambda: len(list_shards(shard_dir)) >= n_shards, timeout, proc)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        if proc.stderr:
            proc.stderr.close()


def held_rels(shard_dir: Path) -> set[str]:
    from tki_sdk.runtime.pipeline.shards import iter_shard_batches

    out: set[str] = set()
    for p in list_shards(shard_dir):
        for b in iter_shard_batches(p, ("rel", "error")):
            out |= {r for r, e in zip(b["rel"], b["error"]) if e is None}
    return out


def test_sigkill_mid_run_then_resume_embeds_nothing_twice(export, pacs_dir, tmp_path, monkeypatch, capsys):
    export_dir, _ = export
    images = tmp_path / "images"
    copy_tree_sample(pacs_sample(pacs_dir, per_class=30, classes=("dog", "horse")), pacs_dir, images)  # 240 files
    all_rels = sorted(p.relative_to(images).as_posix() for p in images.rglob("*.*"))
    out = tmp_path / "g"
    trace1, trace2 = tmp_path / "t1.txt", tmp_path / "t2.txt"
    every = 8
    argv = ["embed", "--model", str(export_dir), "--images", str(images), "--out", str(out), "--threads", "1",
            "--workers", "1", "--batch-size", "4", "--checkpoint-every", str(every)]
    env = {**os.environ, TRACE_ENV: str(trace1), "PYTHONPATH": str(Path(__file__).parent)}
    kill_after_checkpoints(argv, out / "embed-run" / "shards", 3, env)
    assert not (out / "CURRENT").exists()  # killed before the commit
    held = held_rels(out / "embed-run" / "shards")
    first = trace_lines(trace1)
    assert len(held) >= 3 * every and held <= set(first)
    assert len(first) - len(held) <= 2 * every  # lost at most the window and the slice in flight

    monkeypatch.setenv(TRACE_ENV, str(trace2))
    capsys.readouterr()
    assert main(argv[:-2] + ["--checkpoint-every", "64"]) == 0
    assert f"resumed {len(held)} from checkpoints" in capsys.readouterr().err
    second = trace_lines(trace2)
    assert not held & set(second), "a file held in a checkpoint was embedded again"
    assert sorted(held | set(second)) == all_rels and len(second) == len(set(second))

    monkeypatch.delenv(TRACE_ENV)
    assert embed(export_dir, images, tmp_path / "fresh", "--checkpoint-every", "1000") == 0
    assert_same_gallery(out, tmp_path / "fresh")


def test_index_from_parquet_builds_the_same_gallery(export, pacs_dir, tmp_path, capsys):
    export_dir, _ = export
    images = tmp_path / "images"
    copy_tree_sample(pacs_sample(pacs_dir, per_class=2), pacs_dir, images)
    (images / "photo" / "dog" / "broken.jpg").write_bytes(b"not an image")
    shards = tmp_path / "shards"
    assert embed(export_dir, images, tmp_path / "g", "--shards", str(shards), "--checkpoint-every", "5") == 0
    files = list_shards(shards)
    assert len(files) >= 3
    from tki_sdk.common.model_metadata import ModelMetadata

    info = read_shard_info(files[0])
    assert info.model_fingerprint == ModelMetadata.load(export_dir).fingerprint() and info.embedding_dim == 16
    capsys.readouterr()
    assert main(["index", "--from-parquet", str(shards), "--gallery", str(tmp_path / "g2")]) == 0
    assert "failed 1" in capsys.readouterr().err
    assert_same_gallery(tmp_path / "g", tmp_path / "g2")
    # a gallery of another model is refused in one line
    other, _ = make_tiny_export(tmp_path / "other", seed=3)
    assert embed(other, images, tmp_path / "g3") == 0
    capsys.readouterr()
    assert main(["index", "--from-parquet", str(shards), "--gallery", str(tmp_path / "g3")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another model" in err[0]
    assert "--overwrite" not in err[0] and "--gallery" in err[0], err  # tki index has no --overwrite


def test_graph_options_build_the_gallery_and_are_kept(export, pacs_dir, tmp_path, capsys):
    export_dir, _ = export
    images = tmp_path / "images"
    copy_tree_sample(pacs_sample(pacs_dir, per_class=1), pacs_dir, images)
    shards = tmp_path / "shards"
    assert embed(export_dir, images, tmp_path / "g", "--connectivity", "8", "--expansion-add", "40",
                 "--shards", str(shards)) == 0
    g = Gallery.load(tmp_path / "g")
    assert (g.connectivity, g.expansion_add) == (8, 40)
    assert "M=8, ef_add=40" in g.describe()
    before = sorted((tmp_path / "g").rglob("*"))
    capsys.readouterr()
    # an existing graph cannot change shape: refused in one line, gallery untouched
    assert embed(export_dir, images, tmp_path / "g", "--connectivity", "12") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--connectivity 8" in err[0] and "--overwrite" in err[0]
    assert sorted((tmp_path / "g").rglob("*")) == before
    # the same options again are fine (nothing new to embed)
    assert embed(export_dir, images, tmp_path / "g", "--connectivity", "8", "--expansion-add", "40") == 0
    for bad, msg in ((["--exact", "--connectivity", "8"], "--exact"), (["--connectivity", "1"], ">= 2"),
                     (["--expansion-add", "0"], ">= 1")):
        capsys.readouterr()
        assert embed(export_dir, images, tmp_path / "bad", *bad) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0]
        assert not (tmp_path / "bad").exists()
    assert main(["index", "--from-parquet", str(shards), "--gallery", str(tmp_path / "g2"),
                 "--connectivity", "6", "--expansion-add", "24"]) == 0
    g2 = Gallery.load(tmp_path / "g2")
    assert (g2.connectivity, g2.expansion_add) == (6, 24)
    assert_same_gallery(tmp_path / "g", tmp_path / "g2")
