"""Vectors that become zero or non-finite in float32 are refused at ``Gallery.add`` and by ``tki index``.

Reference: numpy -- the float32 conversion of each probe is computed here and checked to be the degenerate
case it stands for, so the test cannot pass on a probe that stays a good vector.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tki_sdk.cli.runtime import main
from tki_sdk.runtime import Gallery
from tki_sdk.runtime.pipeline.shards import ShardInfo, ShardRows, write_shard
from tki_sdk.runtime.pipeline.ingest import SourceFile

D = 8


def _probe(kind: str) -> np.ndarray:
    v = np.zeros(D, dtype=np.float64)
    if kind == "zero":
        pass
    elif kind == "underflow":  # 1e-300 is 0 in float32
        v[0] = 1e-300
    elif kind == "tiny":  # finite in float32, but its squared norm underflows to 0
        v[:] = 1e-30
    elif kind == "overflow":  # 1e40 is inf in float32
        v[0] = 1e40
    elif kind == "huge":  # finite in float32, but its norm overflows: was stored as an all-zero vector
        v[0] = 2e20
    elif kind == "nan":
        v[0] = np.nan
    return v


KINDS = ["zero", "underflow", "tiny", "overflow", "huge", "nan"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("metric", ["cos", "ip"])
def test_gallery_add_refuses_degenerate_float32_vectors(kind, metric):
    v = _probe(kind)
    f32 = v.astype(np.float32)
    norm = np.sqrt(np.sum(f32 * f32, dtype=np.float32))  # the float32 norm the gallery would normalise by
    assert not (np.isfinite(norm) and norm > 0), "probe is not degenerate in float32"
    g = Gallery(D, metric=metric, exact=True)
    good = np.eye(D, dtype=np.float32)[:2]
    keys = np.array([11, 22, 33], dtype=np.uint64)
    with pytest.raises(ValueError) as e:
        g.add(keys, np.vstack([good, v[None]]))
    msg = str(e.value)
    assert "\n" not in msg and "row 2" in msg, msg
    assert len(g) == 0  # nothing of the call was inserted
    g.add(keys[:2], good)
    assert sorted(g.keys().tolist()) == [11, 22]


def test_gallery_add_accepts_small_but_representable_vectors():
    g = Gallery(D, metric="cos", exact=True)
    v = np.full((1, D), 1e-15)  # squared 1e-30 is representable in float32
    g.add([7], v)
    np.testing.assert_allclose(g.get_vectors([7])[0], np.full(D, 1 / np.sqrt(D)), rtol=1e-5)


def _rows(vectors: list[np.ndarray]) -> ShardRows:
    rows = ShardRows()
    for i, v in enumerate(vectors):
        rows.append(SourceFile(key=100 + i, path=f"/x/{i}.jpg", rel=f"{i}.jpg", domain=None, class_name=None,
                               size=10, mtime_ns=1, sha256=None), v, None)
    return rows


@pytest.mark.parametrize("kind", ["zero", "huge", "underflow"])
def test_tki_index_refuses_a_shard_with_a_degenerate_vector(kind, tmp_path, capsys):
    info = ShardInfo(model_fingerprint="f" * 64, embedding_dim=D)
    good = [np.eye(D, dtype=np.float32)[i] for i in range(3)]
    bad = _probe(kind).astype(np.float32)
    shards = tmp_path / "shards"
    path = write_shard(shards, _rows([*good, bad]), info)
    code = main(["index", "--from-parquet", str(shards), "--gallery", str(tmp_path / "g")])
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert code == 2 and len(err) == 1, err
    assert path.name in err[0], err
    assert not (tmp_path / "g" / "CURRENT").exists()
