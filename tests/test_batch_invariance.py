"""An image's embedding never depends on the other images in its batch (issue 21, finding 12).

Every artifact the runtime may pick by itself (the engine choice's candidates, the default precision) is run
on one image alone and inside three different batches, at different positions: the vectors agree to cosine
>= 0.999999. A dynamically quantised int8 artifact (one activation scale per batch tensor) is batch-dependent:
it is never picked by default, and choosing it explicitly works but says so.
"""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from export_fixtures import cosines, exported  # noqa: F401  (fixture)
from tki_sdk.common.artifacts import batch_invariant
from tki_sdk.common.atomic import sha256_file
from tki_sdk.runtime import Embedder, ModelMetadata
from tki_sdk.runtime.engine.engine_choice import candidates, choose_engine, installed_engines
from tki_sdk.runtime.engine.ort_session import OrtSession, SessionConfig

MIN_COSINE = 0.999999


def _pixels(exported: dict, n: int = 12) -> np.ndarray:
    from tki_sdk.runtime.engine.preprocess import Preprocessor

    files = sorted(exported["calib"].iterdir())[:n]
    return Preprocessor.from_metadata(exported["out"]).batch(files)


def _worst_batch_cosine(run, x: np.ndarray) -> float:
    """min cosine between image 0 embedded alone and the same image inside three different batches."""
    alone = run(x[:1])
    rng = np.random.default_rng(0)
    batches = [x[[0, 1, 2, 3]],                                   # first of four
               np.concatenate([x[5:11], x[:1]]),                  # last of seven
               np.concatenate([x[[7]], x[:1], x[rng.permutation(np.arange(1, len(x)))]])]  # 2nd of a full batch
    where = [0, 6, 1]
    got = [run(b)[i:i + 1] for b, i in zip(batches, where)]
    return float(min(cosines(alone, g)[0] for g in got))


def _ort_runner(path):
    s = OrtSession(path, SessionConfig(device="cpu", threads=2, spin=False, io_binding=False))
    return s.run


def _dynamic_copy(exported: dict, dst) -> "Path":  # noqa: F821
    """The tiny export with its int8 artifact replaced by a per-tensor dynamic quantisation, recorded as the
    export records it (scheme ``dynamic``, parity passed)."""
    from tki_sdk.export.quantize import quantize_int8_dynamic

    shutil.copytree(exported["out"], dst)
    p = dst / "model.int8.onnx"
    info = quantize_int8_dynamic(dst / "model.onnx", p, per_channel=False, head="tki")
    md = json.loads((dst / "tki.json").read_text())
    entry = {k: v for k, v in md["artifacts"]["int8"].items() if k not in ("candidates", "batch_invariant")}
    entry.update(info, file=p.name, bytes=p.stat().st_size, sha256=sha256_file(p), parity_pass=True)
    md["artifacts"]["int8"] = entry
    (dst / "tki.json").write_text(json.dumps(md))
    return dst


def test_every_artifact_the_runtime_may_pick_is_batch_invariant(exported):  # noqa: F811
    out = exported["out"]
    md = ModelMetadata.load(out)
    x = _pixels(exported)
    picks = {c.precision for c in candidates(md, out, list(installed_engines())) if c.engine == "onnxruntime"}
    picks.add(md.default_precision)
    assert "fp32" in picks
    # the shipped int8 is among them exactly when its scheme is batch-invariant (static QDQ, which passes here)
    assert ("int8" in picks) is (md.artifacts["int8"]["batch_invariant"] is True), picks
    for key in sorted(picks):
        worst = _worst_batch_cosine(_ort_runner(out / md.artifacts[key]["file"]), x)
        assert worst >= MIN_COSINE, f"{key} ({md.artifacts[key].get('scheme')}): cosine {worst}"
    # the Embedder's own default path too
    emb = Embedder(out, threads=2)
    assert emb.batch_invariant
    assert _worst_batch_cosine(emb.embed_pixels, x) >= MIN_COSINE


def test_the_export_records_which_int8_schemes_are_batch_invariant(exported):  # noqa: F811
    arts = ModelMetadata.load(exported["out"]).artifacts
    cands = arts["int8"]["candidates"]
    assert cands["dynamic"]["batch_invariant"] is False and cands["static_qdq"]["batch_invariant"] is True
    if cands["static_qdq"]["pass"]:  # a batch-invariant candidate that passes ships, even when slower
        assert arts["int8"]["scheme"] == "static_qdq" and arts["int8"]["batch_invariant"] is True
    assert all(batch_invariant(k, arts[k]) for k in ("fp32", "fp16", "int8"))


def test_per_tensor_dynamic_int8_is_batch_dependent_and_never_picked_by_default(exported, tmp_path, caplog):  # noqa: F811
    d = _dynamic_copy(exported, tmp_path / "dyn")
    md = ModelMetadata.load(d)
    assert batch_invariant("int8", md.artifacts["int8"]) is False  # old exports: decided from the scheme
    x = _pixels(exported)
    # the reason it is excluded is real: the same image changes with its batch-mates
    assert _worst_batch_cosine(_ort_runner(d / "model.int8.onnx"), x) < MIN_COSINE
    assert "int8" not in {c.precision for c in candidates(md, d, ["onnxruntime"])}
    # even when it would measure fastest, the choice never lands on it
    fake = {"onnxruntime:int8": 1e6, "onnxruntime:fp32": 10.0, "onnxruntime:fp16": 5.0}
    choice = choose_engine(md, d, 2, measure=lambda cs: {c.label: fake.get(c.label, 1.0) for c in cs},
                           engines=["onnxruntime"], cache=tmp_path / "cache")
    assert choice.precision != "int8" and choice.precision is not None
    # a default_precision naming it falls back to fp32
    raw = json.loads((d / "tki.json").read_text())
    raw["default_precision"] = "int8"
    for a in raw["artifacts"].values():
        a.pop("parity_pass", None)  # no recorded parity: the default precision is what runs
    (d / "tki.json").write_text(json.dumps(raw))
    with caplog.at_level(logging.WARNING):
        emb = Embedder(d, threads=2)
    assert emb.precision == "fp32" and emb.batch_invariant
    # chosen explicitly it runs, and says it is batch-dependent
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        emb8 = Embedder(d, precision="int8", threads=2)
    assert emb8.precision == "int8" and emb8.batch_invariant is False
    assert any("batch" in r.getMessage() and "int8" in r.getMessage() for r in caplog.records)
    assert emb8.embed_pixels(x[:2]).shape == (2, md.embedding_dim)


@pytest.mark.parametrize("entry, expected", [
    ({}, True),
    ({"scheme": "static_qdq"}, True),
    ({"scheme": "dynamic"}, False),
    ({"scheme": "dynamic", "batch_invariant": True}, True),   # a per-row dynamic scheme records it
    ({"scheme": "static_qdq", "batch_invariant": False}, False),
])
def test_batch_invariant_reads_the_record_then_the_scheme(entry, expected):
    assert batch_invariant("int8", entry) is expected
