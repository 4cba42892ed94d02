"""The Embedder's engine choice (tki_sdk.runtime.engine.engine_choice): candidates, the pick from (fake, deterministic)
timings, the cache and what invalidates it, and one real measurement on the tiny export."""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from tki_sdk.common.atomic import sha256_file

from export_fixtures import exported  # noqa: F401  (fixture)
from runtime_fixtures import make_tiny_export
from tki_sdk.common.cpu import cpu_info
from tki_sdk.export.validate import OrtRunner
from tki_sdk.runtime import Embedder, ModelMetadata
from tki_sdk.runtime.engine.engine_choice import CACHE_FILE, EngineChoiceCache, candidates, choose_engine, installed_engines

VERSIONS = {"tki-sdk": "0.1.0", "onnxruntime": "1.0", "openvino": "2.0"}


@pytest.fixture
def export(tmp_path):
    """A tiny export whose tki.json records parity: fp32 and int8 passed, fp16 failed, fp32 passed on OpenVINO,
    a TensorRT plan (never a CPU candidate), and an artifact whose file is missing."""
    d, _ = make_tiny_export(tmp_path / "export")
    for name in ("model.int8.onnx", "model.fp16.onnx", "model.plan"):
        shutil.copyfile(d / "model.onnx", d / name)
    md = ModelMetadata.load(d)
    arts = md.artifacts
    arts["fp32"].update(parity_pass=True, runtime="onnxruntime",
                        engines={"openvino": {"parity_pass": True, "parity_min_cosine": 0.999999}})
    real = sha256_file(d / "model.onnx")  # the copies' true hash: the Embedder verifies model files
    arts["int8"] = {"file": "model.int8.onnx", "sha256": real, "runtime": "onnxruntime", "parity_pass": True}
    arts["fp16"] = {"file": "model.fp16.onnx", "sha256": real, "runtime": "onnxruntime", "parity_pass": False}
    arts["tensorrt_fp16"] = {"file": "model.plan", "format": "tensorrt_plan", "runtime": "tensorrt", "parity_pass": True}
    arts["openvino_int8"] = {"file": "gone.onnx", "runtime": "openvino", "parity_pass": True}
    md.save(d)
    return d


class FakeTimer:
    """Deterministic img/s per candidate label; counts how often it was asked."""

    def __init__(self, speeds):
        self.speeds, self.calls = dict(speeds), 0

    def __call__(self, cands):
        self.calls += 1
        return {c.label: self.speeds[c.label] for c in cands if c.label in self.speeds}


def _choose(export, timer, tmp_path, **kw):
    kw.setdefault("cpu", cpu_info())
    kw.setdefault("versions", VERSIONS)
    kw.setdefault("engines", ["onnxruntime", "openvino"])
    return choose_engine(ModelMetadata.load(export), export, 2, measure=timer, cache=tmp_path / "cache", **kw)


def test_candidates_are_parity_passing_artifacts_on_installed_engines(export):
    md = ModelMetadata.load(export)
    labels = [c.label for c in candidates(md, export, ["onnxruntime", "openvino"])]
    assert labels == ["onnxruntime:fp32", "openvino:fp32", "onnxruntime:int8"]
    assert [c.label for c in candidates(md, export, ["onnxruntime"])] == ["onnxruntime:fp32", "onnxruntime:int8"]


@pytest.mark.parametrize("winner", ["onnxruntime:fp32", "openvino:fp32", "onnxruntime:int8"])
def test_fastest_candidate_is_chosen(export, tmp_path, winner):
    speeds = {"onnxruntime:fp32": 10.0, "openvino:fp32": 11.0, "onnxruntime:int8": 12.0}
    speeds[winner] = 50.0
    ch = _choose(export, FakeTimer(speeds), tmp_path)
    assert f"{ch.engine}:{ch.precision}" == winner and ch.source == "measured"
    assert ch.images_per_s == speeds and f"{winner} 50.0 img/s" in ch.reason and ch.threads == 2


def test_cached_choice_is_reused_without_measuring(export, tmp_path):
    t = FakeTimer({"onnxruntime:fp32": 10.0, "openvino:fp32": 30.0, "onnxruntime:int8": 20.0})
    first = _choose(export, t, tmp_path)
    again = _choose(export, t, tmp_path)
    assert t.calls == 1 and again.source == "cache"
    assert (again.precision, again.engine, again.images_per_s) == (first.precision, first.engine, first.images_per_s)
    store = EngineChoiceCache.load(tmp_path / "cache" / CACHE_FILE)
    assert store.cpu_key == cpu_info().key and store.versions == VERSIONS and len(store.choices) == 1


def test_other_cpu_or_versions_invalidate_the_cache(export, tmp_path):
    t = FakeTimer({"onnxruntime:fp32": 10.0, "openvino:fp32": 30.0, "onnxruntime:int8": 20.0})
    here = cpu_info()
    _choose(export, t, tmp_path, cpu=here)
    other_cpu = dataclasses.replace(here, model=here.model + " (another)")
    _choose(export, t, tmp_path, cpu=other_cpu)
    assert t.calls == 2  # another CPU model: measured again, and the file now belongs to it
    assert EngineChoiceCache.load(tmp_path / "cache" / CACHE_FILE).cpu == other_cpu.model
    _choose(export, t, tmp_path, cpu=other_cpu)
    assert t.calls == 2
    _choose(export, t, tmp_path, cpu=other_cpu, versions={**VERSIONS, "onnxruntime": "1.1"})
    assert t.calls == 3  # a new onnxruntime: measured again
    other_flags = dataclasses.replace(other_cpu, flags=(*other_cpu.flags, "avx512_vnni"))
    _choose(export, t, tmp_path, cpu=other_flags, versions={**VERSIONS, "onnxruntime": "1.1"})
    assert t.calls == 4  # same name, other ISA (e.g. a VM moved hosts): measured again


def test_new_artifact_or_threads_get_their_own_entry(export, tmp_path):
    t = FakeTimer({"onnxruntime:fp32": 10.0, "openvino:fp32": 30.0, "onnxruntime:int8": 20.0})
    _choose(export, t, tmp_path)
    md = ModelMetadata.load(export)
    md.artifacts["int8"]["sha256"] = "c" * 64  # re-exported int8
    md.save(export)
    _choose(export, t, tmp_path)
    assert t.calls == 2
    choose_engine(ModelMetadata.load(export), export, 1, measure=t, cache=tmp_path / "cache", cpu=cpu_info(),
                  versions=VERSIONS, engines=["onnxruntime", "openvino"])
    assert t.calls == 3
    assert len(EngineChoiceCache.load(tmp_path / "cache" / CACHE_FILE).choices) == 3


def test_damaged_cache_is_measured_over(export, tmp_path):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / CACHE_FILE).write_text("{not json")
    t = FakeTimer({"onnxruntime:fp32": 10.0, "openvino:fp32": 30.0, "onnxruntime:int8": 20.0})
    assert _choose(export, t, tmp_path).source == "measured" and t.calls == 1
    assert json.loads((tmp_path / "cache" / CACHE_FILE).read_text())["format_version"] == 1


def test_no_recorded_parity_keeps_the_default(tmp_path):
    d, _ = make_tiny_export(tmp_path / "plain")  # tki.json without parity records
    t = FakeTimer({})
    ch = choose_engine(ModelMetadata.load(d), d, 1, measure=t, cache=tmp_path / "c", versions=VERSIONS)
    assert ch.precision is None and ch.source == "default" and t.calls == 0
    e = Embedder(d, threads=1)
    assert e.precision == "fp32" and e.backend == "onnxruntime" and e.engine_choice.source == "default"


def test_explicit_precision_or_backend_skips_the_choice(export):
    e = Embedder(export, precision="int8", threads=1)
    assert e.engine_choice is None and e.precision == "int8" and e.backend == "onnxruntime"
    e = Embedder(export, backend="onnxruntime", threads=1)
    assert e.engine_choice is None and e.precision == "fp32"


def test_auto_measures_for_real_on_the_tiny_export(exported, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("TKI_CACHE_DIR", str(tmp_path / "cache"))
    out = exported["out"]
    e = Embedder(out, threads=1)
    ch = e.engine_choice
    expected = {c.label for c in candidates(ModelMetadata.load(out), out, list(installed_engines()))}
    assert ch.source == "measured" and set(ch.images_per_s) == expected
    assert {"onnxruntime:fp32", "onnxruntime:fp16", "onnxruntime:int8"} <= expected
    assert f"{e.backend}:{e.precision}" == max(ch.images_per_s, key=ch.images_per_s.get)
    # the embeddings are those of the chosen artifact
    x = np.random.default_rng(3).standard_normal((4, 3, *e.input_size)).astype(np.float32)
    if e.backend == "onnxruntime":
        ref = OrtRunner(e.model_path, threads=1).run(x)
        np.testing.assert_allclose(e.embed_pixels(x), ref, atol=1e-6)
    again = Embedder(out, threads=1)
    assert again.engine_choice.source == "cache" and again.precision == e.precision


def test_tki_info_model_says_what_runs_and_why(export, tmp_path, monkeypatch, capsys):
    from tki_sdk.cli.main import main

    monkeypatch.setenv("TKI_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["info", "--model", str(export), "--threads", "1"]) == 0
    text = capsys.readouterr().out
    e = Embedder(export, threads=1)  # reads the choice tki info measured
    assert e.engine_choice.source == "cache"
    n = len(e.engine_choice.images_per_s)
    assert f"engine:       {e.backend} ({e.provider}), artifact {e.precision}" in text
    assert f"why:        fastest of {n} candidates that passed parity" in text and "[measured" in text
    assert text.count("measured:   ") == n and cpu_info().model in text
    assert main(["info", "--model", str(tmp_path / "nowhere")]) == 2
    assert main(["info"]) == 2
