"""``tki embed --engine ray`` on a local Ray with 2 CPUs: equal to one process, an actor killed mid-job, the
driver killed mid-job then resumed.

The reference is the single-process engine (itself checked against the numpy model in
test_embed_incremental.py); inference calls are counted from the ``TKI_EMBED_TRACE`` log the actors append
to. One Ray instance serves the module and is shut down at its end.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from runtime_fixtures import build_hostile_folder, copy_tree_sample, make_tiny_export, pacs_sample
from test_embed_incremental import assert_same_gallery, held_rels, kill_after_checkpoints, trace_lines
from tki_sdk.runtime import Gallery
from tki_sdk.cli.runtime import main
from tki_sdk.runtime.pipeline.distributed import FAULT_ENV
from tki_sdk.runtime.pipeline.embed_run import TRACE_ENV
from tki_sdk.runtime.pipeline.shards import iter_shard_batches, list_shards

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return make_tiny_export(tmp_path_factory.mktemp("export") / "tiny")[0]


def embed(export_dir: Path, images: Path, out: Path, *extra: str) -> int:
    return main(["embed", "--model", str(export_dir), "--images", str(images), "--out", str(out), "--threads", "1",
                 "--batch-size", "4", *extra])


def test_ray_equals_one_process_with_hostile_files(ray_cluster, export, pacs_dir, tmp_path):
    images = tmp_path / "images"
    copy_tree_sample(pacs_sample(pacs_dir, per_class=2), pacs_dir, images)
    expect = build_hostile_folder(images / "photo" / "mixed", pacs_sample(pacs_dir, per_class=1, domains=("photo", "sketch")))
    bad = {n for n, r in expect.items() if r is not None}
    e1, e2 = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    assert embed(export, images, tmp_path / "local", "--errors", str(e1)) == 0
    assert embed(export, images, tmp_path / "ray", "--engine", "ray", "--errors", str(e2)) == 0
    assert_same_gallery(tmp_path / "local", tmp_path / "ray")
    local = sorted((d["path"], d["reason"]) for d in map(json.loads, e1.read_text().splitlines()))
    remote = sorted((d["path"], d["reason"]) for d in map(json.loads, e2.read_text().splitlines()))
    assert local == remote and {Path(p).name for p, _ in remote} == bad


def test_actor_killed_mid_job_every_good_file_indexed_once(ray_cluster, export, pacs_dir, tmp_path, monkeypatch):
    images = tmp_path / "images"
    copy_tree_sample(pacs_sample(pacs_dir, per_class=5), pacs_dir, images)  # 40 files
    rels = sorted(p.relative_to(images).as_posix() for p in images.rglob("*.*"))
    marker, trace, shards = tmp_path / "killed", tmp_path / "trace.txt", tmp_path / "shards"
    monkeypatch.setenv(FAULT_ENV, str(marker))
    monkeypatch.setenv(TRACE_ENV, str(trace))
    assert embed(export, images, tmp_path / "g", "--engine", "ray", "--shards", str(shards)) == 0
    assert marker.exists(), "the fault hook never fired"
    sent = trace_lines(trace)
    assert sorted(set(sent)) == rels and len(sent) > len(rels)  # the killed actor's batch ran again
    rows = [r for p in list_shards(shards) for b in iter_shard_batches(p, ("rel",)) for r in b["rel"]]
    assert sorted(rows) == rels  # one row per file in the shards
    g = Gallery.load(tmp_path / "g")
    assert sorted(m["rel"] for m in g.get_metadata(g.keys())) == rels
    monkeypatch.delenv(FAULT_ENV)
    monkeypatch.delenv(TRACE_ENV)
    assert embed(export, images, tmp_path / "local") == 0
    assert_same_gallery(tmp_path / "g", tmp_path / "local")


def test_driver_killed_mid_job_then_resumed(ray_cluster, export, pacs_dir, tmp_path, monkeypatch, capsys):
    images = tmp_path / "images"
    copy_tree_sample(pacs_sample(pacs_dir, per_class=20, classes=("dog", "horse")), pacs_dir, images)  # 160 files
    rels = sorted(p.relative_to(images).as_posix() for p in images.rglob("*.*"))
    out, trace1, trace2 = tmp_path / "g", tmp_path / "t1.txt", tmp_path / "t2.txt"
    argv = ["embed", "--model", str(export), "--images", str(images), "--out", str(out), "--threads", "1",
            "--batch-size", "4", "--engine", "ray", "--address", ray_cluster, "--checkpoint-every", "8",
            "--checkpoint-seconds", "3600"]  # shards by row count only: a loaded machine may take > 60 s to start
    env = {**os.environ, TRACE_ENV: str(trace1), "PYTHONPATH": str(Path(__file__).parent)}
    kill_after_checkpoints(argv, out / "embed-run" / "shards", 2, env, timeout=150)
    assert not (out / "CURRENT").exists()
    held = held_rels(out / "embed-run" / "shards")
    assert len(held) >= 16 and held <= set(trace_lines(trace1))

    monkeypatch.setenv(TRACE_ENV, str(trace2))
    capsys.readouterr()
    assert main(argv) == 0
    assert f"resumed {len(held)} from checkpoints" in capsys.readouterr().err
    second = trace_lines(trace2)
    assert not held & set(second), "a file held in a checkpoint was embedded again"
    assert sorted(held | set(second)) == rels and len(second) == len(set(second))
    monkeypatch.delenv(TRACE_ENV)
    assert embed(export, images, tmp_path / "fresh") == 0
    assert_same_gallery(out, tmp_path / "fresh")
    assert np.all(Gallery.load(out).keys() < 2**63)
