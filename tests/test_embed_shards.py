"""Shards are verified: page checksums, a hash per row, a SHA-256 per checkpoint shard in run.json; later
rows of a key supersede earlier ones; a shard of another width is refused whatever its keys.

References: the vectors written into each shard (numpy), normalised here, against what the gallery holds;
the bytes of the shard files flipped or overwritten here.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tki_sdk.cli.runtime import main
from tki_sdk.common.contract import ContractError
from tki_sdk.runtime import Gallery
from tki_sdk.runtime.pipeline.embed_run import DAMAGED_DIR, RUN_FILE, EmbedJob, index_shards, run_job
from tki_sdk.runtime.pipeline.errors import PipelineError, ShardDamagedError
from tki_sdk.runtime.pipeline.ingest import SourceFile, item_key
from tki_sdk.runtime.pipeline.shards import ShardInfo, ShardRows, list_shards, write_shard

D = 16
FP = "a" * 64


def _source(rel: str) -> SourceFile:
    return SourceFile(key=item_key(rel), path=f"/data/{rel}", rel=rel, domain="photo", class_name="dog", size=100,
                      mtime_ns=1_000, sha256=None)


def _vectors(n: int, seed: int, d: int = D) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def _shard(folder: Path, rels: list[str], vecs: np.ndarray, d: int = D) -> Path:
    rows = ShardRows()
    for rel, v in zip(rels, vecs):
        rows.append(_source(rel), v, None)
    return write_shard(folder, rows, ShardInfo(model_fingerprint=FP, embedding_dim=d))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _gallery_vectors(g: Gallery, rels: list[str]) -> np.ndarray:
    return g.get_vectors(np.array([item_key(r) for r in rels], dtype=np.uint64))


def test_bit_flip_matrix_never_puts_a_wrong_vector_in_the_gallery(tmp_path):
    rels = [f"photo/dog/{i}.jpg" for i in range(6)]
    vecs = _vectors(len(rels), 0)
    good = _shard(tmp_path / "good", rels, vecs)
    data = good.read_bytes()
    expect_meta = None
    g0 = Gallery(D, exact=True, model_fingerprint=FP)
    index_shards(g0, [good])
    expect_meta = g0.get_metadata(np.array([item_key(r) for r in rels], dtype=np.uint64))
    step = max(1, len(data) // 300)
    refused = harmless = 0
    for off in range(0, len(data), step):
        bad = bytearray(data)
        bad[off] ^= 1 << (off % 8)
        shard_dir = tmp_path / f"flip{off}"
        shard_dir.mkdir()
        path = shard_dir / good.name
        path.write_bytes(bytes(bad))
        g = Gallery(D, exact=True, model_fingerprint=FP)
        try:
            index_shards(g, [path])
        except (PipelineError, ContractError) as e:
            assert path.name in str(e) and "\n" not in str(e), (off, str(e))
            refused += 1
        else:  # provably harmless: the same items with the same vectors and metadata
            keys = np.array([item_key(r) for r in rels], dtype=np.uint64)
            assert sorted(g.keys().tolist()) == sorted(keys.tolist()), off
            np.testing.assert_allclose(_gallery_vectors(g, rels), _unit(vecs), atol=1e-6, err_msg=str(off))
            assert g.get_metadata(keys) == expect_meta, off
            harmless += 1
        shutil.rmtree(shard_dir)
    assert refused > 0.5 * (refused + harmless), (refused, harmless)  # the data pages are most of the file


def test_later_rows_supersede_earlier_ones_even_with_identical_metadata(tmp_path, capsys):
    rels = [f"photo/dog/{i}.jpg" for i in range(4)]
    first, second = _vectors(4, 1), _vectors(4, 2)
    shards = tmp_path / "shards"
    _shard(shards, rels, first)
    _shard(shards, rels, second)  # same keys, same metadata, other vectors: written later
    gpath = tmp_path / "g"
    assert main(["index", "--from-parquet", str(shards), "--gallery", str(gpath), "--exact"]) == 0
    np.testing.assert_allclose(_gallery_vectors(Gallery.load(gpath), rels), _unit(second), atol=1e-6)
    # the earlier shard alone, indexed again: its vectors differ from the gallery's, so they are not "unchanged"
    only_first = tmp_path / "first"
    only_first.mkdir()
    shutil.copy(list_shards(shards)[0], only_first)
    capsys.readouterr()
    assert main(["index", "--from-parquet", str(only_first), "--gallery", str(gpath)]) == 0
    assert "updated 4, unchanged 0" in capsys.readouterr().err
    np.testing.assert_allclose(_gallery_vectors(Gallery.load(gpath), rels), _unit(first), atol=1e-6)
    capsys.readouterr()
    assert main(["index", "--from-parquet", str(only_first), "--gallery", str(gpath)]) == 0
    assert "updated 0, unchanged 4" in capsys.readouterr().err


def test_a_shard_of_another_width_is_refused_whatever_its_keys(tmp_path, capsys):
    rels = [f"photo/dog/{i}.jpg" for i in range(3)]
    wide = tmp_path / "wide"
    _shard(wide, rels, _vectors(3, 3))
    gpath = tmp_path / "g"
    assert main(["index", "--from-parquet", str(wide), "--gallery", str(gpath)]) == 0
    before = (gpath / "CURRENT").read_text()
    narrow = tmp_path / "narrow"
    path = _shard(narrow, rels, _vectors(3, 4, d=8), d=8)  # the same keys, 8-d
    capsys.readouterr()
    code = main(["index", "--from-parquet", str(narrow), "--gallery", str(gpath)])
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert code == 2 and len(err) == 1 and path.name in err[0] and "8-d" in err[0], err
    assert (gpath / "CURRENT").read_text() == before


def _fake_engine(stop_after_shards: int | None = None):
    """Writes each file's vector (a function of its key, so re-embedding gives the same one) and records
    which files it was given; optionally stops like Ctrl-C after writing ``stop_after_shards`` shards."""
    seen: list[str] = []

    def engine(todo, checkpoints):
        for s in todo:
            seen.append(s.rel)
            checkpoints.add(s, np.random.default_rng(s.key % 2**32).standard_normal(D).astype(np.float32), None)
            checkpoints.maybe_flush()
            if stop_after_shards is not None and len(checkpoints.written) >= stop_after_shards:
                raise KeyboardInterrupt
        checkpoints.flush()
        return len(todo)

    return engine, seen


def test_a_damaged_checkpoint_is_named_then_set_aside_and_its_rows_embedded_again(tmp_path):
    images = tmp_path / "img"
    images.mkdir()
    for i in range(12):
        (images / f"{i:02d}.jpg").write_bytes(b"x" * (i + 1))  # the fake engine never decodes
    out = tmp_path / "g"
    info = ShardInfo(model_fingerprint=FP, embedding_dim=D)

    def new_gallery():
        return Gallery(D, exact=True, model_fingerprint=FP)

    job = EmbedJob(images=images, out=out, every=4)
    engine, _ = _fake_engine(stop_after_shards=2)
    with pytest.raises(KeyboardInterrupt):
        run_job(job, info, engine, new_gallery)
    shards = list_shards(out / "embed-run" / "shards")
    assert len(shards) == 2 and all(s.name in (out / "embed-run" / RUN_FILE).read_text() for s in shards)
    victim = shards[0]
    raw = bytearray(victim.read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + 8] = b"\xff" * 8
    victim.write_bytes(bytes(raw))
    from tki_sdk.runtime.pipeline.shards import iter_shard_batches

    engine, seen = _fake_engine()
    with pytest.raises(ShardDamagedError) as e:
        run_job(job, info, engine, new_gallery)
    msg = str(e.value)
    assert e.value.code == 4 and victim.name in msg and "--set-aside-damaged" in msg and "\n" not in msg, msg
    assert not seen and not (out / "CURRENT").exists()
    kept = {r for b in iter_shard_batches(shards[1], ("rel",)) for r in b["rel"]}
    rep = run_job(EmbedJob(images=images, out=out, every=4, set_aside_damaged=True), info, engine, new_gallery)
    assert (out / "embed-run").exists() is False
    assert len(seen) == 12 - len(kept) and not set(seen) & kept  # the set-aside rows, and only what was not held
    assert rep.resumed == len(kept) and rep.gallery_items == 12
    g = Gallery.load(out)
    for rel in sorted(p.name for p in images.iterdir()):
        k = item_key(rel)
        want = np.random.default_rng(k % 2**32).standard_normal(D).astype(np.float32)
        np.testing.assert_allclose(g.get_vectors([k])[0], want / np.linalg.norm(want), atol=1e-6)
