"""Triton repository well formed (parsed with an independent protobuf-text-format reader); TensorRT build and
parity where tensorrt and a GPU exist (skipped otherwise)."""
from __future__ import annotations

import hashlib
import re
import shutil

import numpy as np
import pytest

from export_fixtures import exported  # noqa: F401  (fixture)
from tki_sdk.export.tensorrt import TENSORRT_MISSING, build_engine, tensorrt_available, TensorRTBuildError
from tki_sdk.export.triton import write_triton_repo
from tki_sdk.common.model_metadata import ModelMetadata

_TOKEN = re.compile(r'\s*(?:(#[^\n]*)|([A-Za-z_][A-Za-z0-9_]*)|("(?:[^"\\]|\\.)*")|(-?\d+(?:\.\d+)?)|([:\[\]{},]))')


def parse_pbtxt(text: str) -> dict:
    """Minimal protobuf text-format reader: ``key: scalar``, ``key: [a, b]``, ``key { ... }``, ``key [ {..}, ]``.
    Repeated keys become lists. Raises ValueError on anything malformed."""
    toks: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"bad token at {pos}: {text[pos:pos + 20]!r}")
        pos = m.end()
        if m.group(1):
            continue
        kind = "id" if m.group(2) else "str" if m.group(3) else "num" if m.group(4) else "p"
        toks.append((kind, m.group(m.lastindex)))
    i = 0

    def value():
        nonlocal i
        k, v = toks[i]
        i += 1
        if k == "str":
            return v[1:-1]
        if k == "num":
            return float(v) if "." in v else int(v)
        if k == "id":
            return v  # enum
        if v == "{":
            return message("}")
        if v == "[":
            items = []
            while toks[i] != ("p", "]"):
                items.append(value())
                if toks[i] == ("p", ","):
                    i += 1
            i += 1
            return items
        raise ValueError(f"unexpected {v!r}")

    def message(end):
        nonlocal i
        out: dict = {}
        repeated: set[str] = set()
        while i < len(toks) and toks[i] != ("p", end):
            k, key = toks[i]
            if k != "id":
                raise ValueError(f"expected a field name, got {key!r}")
            i += 1
            if toks[i] == ("p", ":"):
                i += 1
            elif toks[i] not in (("p", "{"), ("p", "[")):
                raise ValueError(f"field {key} lacks ':'")
            v = value()
            if key in out:
                if key not in repeated:
                    out[key] = [out[key]]
                    repeated.add(key)
                out[key].append(v)
            else:
                out[key] = v
        if end == "}":
            if i >= len(toks):
                raise ValueError("unbalanced braces")
            i += 1
        return out

    res = message(None)
    if i != len(toks):
        raise ValueError("trailing tokens")
    return res


def test_pbtxt_reader_rejects_malformed():
    assert parse_pbtxt('a: 1\nb { c: "x" d: [ 1, 2 ] }') == {"a": 1, "b": {"c": "x", "d": [1, 2]}}
    for bad in ("a: {", "a 1", "a: [ 1, 2", "}"):
        with pytest.raises((ValueError, IndexError)):
            parse_pbtxt(bad)




def test_triton_repository_is_well_formed(exported, tmp_path):
    src = tmp_path / "export"
    shutil.copytree(exported["out"], src)
    # a TensorRT plan entry as a GPU export would list it (the repository only copies the file)
    (src / "model.plan").write_bytes(b"plan-bytes")
    md = ModelMetadata.load(src)
    md.artifacts["tensorrt_fp16"] = {"file": "model.plan", "bytes": 10, "sha256": "-", "precision": "fp16",
                                     "max_batch": 32}
    md.save(src)
    repo = tmp_path / "triton"
    info = write_triton_repo(repo, src, max_batch=16)
    assert set(info["models"]) == {"tki_fp32", "tki_fp16", "tki_int8", "tki_tensorrt_fp16"}
    h, w = md.preprocess.size
    for name, m in info["models"].items():
        cfg = parse_pbtxt((repo / name / "config.pbtxt").read_text())
        art = md.artifacts[m["precision"]]
        assert cfg["name"] == name
        if name == "tki_tensorrt_fp16":
            assert cfg["platform"] == "tensorrt_plan" and cfg["max_batch_size"] == 32
            assert (repo / name / "1" / "model.plan").read_bytes() == b"plan-bytes"
            assert cfg["instance_group"][0]["kind"] == "KIND_GPU"
        else:
            assert cfg["backend"] == "onnxruntime" and cfg["max_batch_size"] == 16
            f = repo / name / "1" / "model.onnx"
            assert hashlib.sha256(f.read_bytes()).hexdigest() == art["sha256"]
        (inp,), (out,) = cfg["input"], cfg["output"]
        assert inp == {"name": "pixel_values", "data_type": "TYPE_FP32", "dims": [3, h, w]}
        assert out == {"name": "embedding", "data_type": "TYPE_FP32", "dims": [md.embedding_dim]}
        db = cfg["dynamic_batching"]
        assert db["max_queue_delay_microseconds"] > 0
        assert all(1 <= b <= cfg["max_batch_size"] for b in db["preferred_batch_size"])
        assert (repo / name / "tki.json").is_file()
    assert parse_pbtxt((repo / "tki_int8" / "config.pbtxt").read_text())["instance_group"][0]["kind"] == "KIND_CPU"


def test_build_engine_without_tensorrt_says_what_to_install(tmp_path):
    if tensorrt_available() is not None:
        pytest.skip("tensorrt is installed here")
    with pytest.raises(TensorRTBuildError) as e:
        build_engine(tmp_path / "m.onnx", tmp_path / "m.plan", image_size=(32, 32))
    assert str(e.value) == TENSORRT_MISSING and "pip install 'tki-sdk[gpu]'" in str(e.value)


@pytest.mark.gpu
def test_tensorrt_engine_meets_parity(exported, tmp_path):
    pytest.importorskip("tensorrt")
    from tki_sdk.export.onnx_export import load_proto, tail_nodes
    from tki_sdk.export.validate import build_inputs, generated_images, validate_runner
    from tki_sdk.runtime.engine.tensorrt_runner import TensorRTRunner

    onnx_path = exported["out"] / "model.onnx"
    proto = load_proto(onnx_path)
    tail = set(tail_nodes(proto))
    keep = {o for n in proto.graph.node if n.name in tail for o in n.output}
    plan = tmp_path / "model.plan"
    info = build_engine(onnx_path, plan, image_size=(32, 32), max_batch=8, fp32_tensors=keep,
                        timing_cache=tmp_path / "cache.bin")
    assert plan.stat().st_size > 0 and (tmp_path / "cache.bin").is_file()
    assert info["profile"]["max_batch"] == 8
    model = exported["model"]
    inputs = build_inputs(model, generated_images(6, model.clip.preprocess_cfg), image_source="generated")
    rt = TensorRTRunner(plan, "pixel_values", "embedding")
    res = validate_runner("tensorrt_fp16", plan.name, rt.run, inputs, max_batch=8)
    assert res.passed, res.failure_line()
    assert np.isfinite(rt.run(inputs.groups["random"][:8])).all()
