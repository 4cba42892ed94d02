"""Export of the tiny model: fp32 ONNX equals torch (batch 1 and 5), fp16 / int8 meet their thresholds, only
standard ops in model.onnx, tki.json / parity.json right, a tampered weight fails validation, --head none works
without a checkpoint, and the export-friendly attention equals nn.MultiheadAttention."""
from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from export_fixtures import cosines, exported, image_folder, open_clip_pixels, torch_float64  # noqa: F401  (fixture)
from tki_sdk.export.fused import (
    ClsOnlyLastBlock,
    ExportAttention,
    FusedEncoder,
    PatchEmbedMatMul,
    export_friendly,
    load_model,
)
from tki_sdk.export.onnx_export import STANDARD_DOMAINS, tail_nodes
from tki_sdk.export.pipeline import ExportConfig, run_export, validate_export
from tki_sdk.export.validate import THRESHOLDS, OrtRunner, ParityError
from tki_sdk.common.model_metadata import ModelMetadata




@pytest.fixture(scope="module")
def fresh_inputs(exported):
    """Inputs never used by the export: other real images (open_clip's own transform) and new random tensors."""
    model = exported["model"]
    files = sorted(exported["calib"].iterdir())[-5:]
    real = open_clip_pixels(files, model)
    rnd = np.random.default_rng(123).standard_normal((5, *real.shape[1:])).astype(np.float32)
    x = np.concatenate([real, rnd])
    return x, torch_float64(model, x)


def test_fp32_equals_torch_at_batch_1_and_5(exported, fresh_inputs):
    model = exported["model"]
    x, _ = fresh_inputs
    runner = OrtRunner(exported["out"] / "model.onnx", threads=1)
    for b in (1, 5):
        xb = x[:b]
        with torch.no_grad():
            ref = model.encode_image(torch.from_numpy(xb)).numpy()
        y = runner.run(xb)
        assert y.shape == (b, model.embedding_dim)
        assert cosines(y, ref).min() >= 0.99999
        np.testing.assert_allclose(y, ref, atol=2e-5, rtol=0)
    # the batch axis is dynamic in the graph itself
    m = onnx.load(str(exported["out"] / "model.onnx"), load_external_data=False)
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    assert m.graph.output[0].type.tensor_type.shape.dim[0].dim_param


def test_model_onnx_uses_only_standard_ops(exported):
    for name in ("model.onnx", "model.fp16.onnx"):
        path = exported["out"] / name
        onnx.checker.check_model(str(path), full_check=True)
        m = onnx.load(str(path), load_external_data=False)
        assert {n.domain for n in m.graph.node} <= STANDARD_DOMAINS
        assert {o.domain for o in m.opset_import} <= STANDARD_DOMAINS
        assert max(o.version for o in m.opset_import) >= 17
        assert [i.name for i in m.graph.input] == ["pixel_values"]
        assert [o.name for o in m.graph.output] == ["embedding"]


def test_fp16_meets_threshold_with_fp32_io_and_head(exported, fresh_inputs):
    x, ref = fresh_inputs
    path = exported["out"] / "model.fp16.onnx"
    y = OrtRunner(path, threads=1).run(x)
    assert y.dtype == np.float32 and np.isfinite(y).all()
    assert cosines(y, ref).min() >= THRESHOLDS["fp16"]
    m = onnx.load(str(path))
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert m.graph.input[0].type.tensor_type.elem_type == f32
    assert m.graph.output[0].type.tensor_type.elem_type == f32
    kinds = [t.data_type for t in m.graph.initializer if np.prod(t.dims) >= 64]
    assert kinds.count(f16) > kinds.count(f32)  # the encoder's weights are float16
    # the head's Möbius layers run in float32: the inputs of its Log (artanh) nodes are float32
    inferred = onnx.shape_inference.infer_shapes(m)
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.input)}
    logs = [n for n in inferred.graph.node if n.op_type == "Log"]
    assert logs and all(types.get(n.input[0]) == f32 for n in logs)


def test_int8_meets_threshold_and_records_scheme(exported, fresh_inputs):
    x, ref = fresh_inputs
    y = OrtRunner(exported["out"] / "model.int8.onnx", threads=1).run(x)
    assert cosines(y, ref).min() >= THRESHOLDS["int8"]
    art = ModelMetadata.load(exported["out"]).artifacts["int8"]
    assert art["scheme"] in ("dynamic", "static_qdq")
    cands = art["candidates"]
    assert set(cands) == {"dynamic", "static_qdq"}
    passing = {k: c for k, c in cands.items() if c["pass"]}
    assert art["scheme"] in passing
    # the fastest batch-invariant candidate ships; a batch-dependent one only when none passes
    steady = {k: c for k, c in passing.items() if c["batch_invariant"]}
    assert art["batch_invariant"] is bool(steady)
    assert cands[art["scheme"]]["ms_per_image"] == min(c["ms_per_image"] for c in (steady or passing).values())
    # the int8 graph really is quantised
    m = onnx.load(str(exported["out"] / "model.int8.onnx"), load_external_data=False)
    ops = {n.op_type for n in m.graph.node}
    assert ops & {"DynamicQuantizeLinear", "QuantizeLinear", "MatMulInteger", "QAttention"}


def test_tki_json_fields(exported):
    out, model = exported["out"], exported["model"]
    md = ModelMetadata.load(out)
    raw = json.loads((out / "tki.json").read_text())
    for key in ("model_name", "weights", "checkpoint", "head", "head_config", "output_space", "metric",
                "embedding_dim", "preprocess", "input_name", "output_name", "opset", "artifacts",
                "default_precision", "versions"):
        assert key in raw, key
    for copy in ("curvature", "image_size", "precisions"):  # each fact is stored once (head_config, preprocess)
        assert copy not in raw, copy
    assert md.model_name == "TKI-Tiny-ViT"
    assert md.head == "tki" and md.output_space == "ball_l2" and md.metric == "cos"
    assert md.embedding_dim == model.embedding_dim == model.head.out_dim
    assert md.curvature == model.head.config.curvature
    assert md.preprocess.to_dict() == {**model.clip.preprocess_cfg, "size": list(model.clip.image_size)}
    assert raw["preprocess"]["size"] == list(model.clip.image_size)
    ck = exported["checkpoint"] / "model.safetensors"
    assert md.checkpoint["sha256"] == hashlib.sha256(ck.read_bytes()).hexdigest()
    assert md.opset >= 17 and md.input_name == "pixel_values" and md.output_name == "embedding"
    assert set(md.artifacts) == {"fp32", "fp16", "int8"}
    assert md.default_precision in md.artifacts
    for key, art in md.artifacts.items():
        f = out / art["file"]
        assert f.is_file()
        assert art["bytes"] == f.stat().st_size
        assert art["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
        assert art["precision"] == key and art["format"] == "onnx" and art["runtime"] == "onnxruntime"
        assert art["parity_pass"] is True
    import importlib.metadata as im

    from tki_sdk.common.versions import package_versions

    assert package_versions().items() <= md.versions.items()  # the training packages, as checkpoints record them
    for dist in ("torch", "onnx", "onnxruntime"):
        assert md.versions[dist] == im.version(dist)


def test_parity_json(exported):
    p = json.loads((exported["out"] / "parity.json").read_text())
    md = ModelMetadata.load(exported["out"])
    assert p["passed"] is True
    assert set(p["groups"]) == {"images", "random"}
    for key, rep in p["artifacts"].items():
        assert rep["threshold"] == THRESHOLDS[key]
        assert rep["pass"] is True and rep["min_cosine"] >= rep["threshold"]
        assert rep["min_cosine"] <= rep["mean_cosine"] <= 1.0 + 1e-12
        assert rep["max_abs_error"] >= 0
        assert rep["batch_sizes"][0] == 1 and rep["batch_sizes"][1] > 1
        assert {g.split("@")[0] for g in rep["per_group"]} == {"images", "random"}
        assert md.artifacts[key]["parity_min_cosine"] == pytest.approx(rep["min_cosine"])


def test_tampered_weight_fails_validation_naming_the_artifact(exported, tmp_path):
    d = tmp_path / "tampered"
    shutil.copytree(exported["out"], d)
    assert validate_export(d, exported["model"], threads=1)["fp32"].passed
    m = onnx.load(str(d / "model.onnx"))
    conv = max(m.graph.initializer, key=lambda t: int(np.prod(t.dims)))  # the largest weight
    w = numpy_helper.to_array(conv).copy()
    w += np.random.default_rng(0).normal(0, w.std(), size=w.shape).astype(w.dtype)
    conv.CopyFrom(numpy_helper.from_array(w, conv.name))
    onnx.save(m, str(d / "model.onnx"))
    with pytest.raises(ParityError) as e:
        validate_export(d, exported["model"], threads=1)
    msg = str(e.value)
    assert "fp32 (model.onnx)" in msg and "embedding" in msg and "0.99999" in msg
    assert "fp16" not in msg and "int8" not in msg  # the untouched artifacts still pass
    failed = e.value.results[0]
    assert failed.artifact == "fp32" and failed.min_cosine < 0.99999
    assert any("sha256" in n for n in failed.notes)


def test_head_none_without_checkpoint(tmp_path):
    out = tmp_path / "vanilla"
    res = run_export(ExportConfig(out=out, head="none", model_name="TKI-Tiny-ViT", precisions=("fp32",),
                                  calib_images=image_folder(tmp_path / "img", None, n=6), val_count=4,
                                  timing_rounds=1, time_torch=False, progress=False, text=False))
    md = ModelMetadata.load(out)
    assert md.head == "none" and md.output_space == "clip_l2" and md.checkpoint is None and md.curvature is None
    assert set(md.artifacts) == {"fp32"} and res.parity["fp32"].passed
    # independent reference: open_clip's own encode_image, L2-normalised
    import open_clip
    import torch.nn.functional as F

    from tki_sdk.train.clip import load_clip

    clip = load_clip("TKI-Tiny-ViT").model
    x = np.random.default_rng(5).standard_normal((3, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = F.normalize(clip.encode_image(torch.from_numpy(x)), dim=-1).numpy()
    assert isinstance(clip, open_clip.CLIP)
    np.testing.assert_allclose(OrtRunner(out / "model.onnx", threads=1).run(x), ref, atol=2e-5)


def test_export_friendly_attention_equals_multihead_attention():
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(64, 4, batch_first=True).eval()
    assert ExportAttention.supports(mha)
    ea = ExportAttention(mha)
    x = torch.randn(3, 7, 64)
    with torch.no_grad():
        ref = mha(x, x, x, need_weights=False)[0]
        got = ea(x, x, x, need_weights=False)[0]
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        # cross-attention and masks fall back to the original module
        y = torch.randn(3, 5, 64)
        torch.testing.assert_close(ea(x, y, y)[0], mha(x, y, y, need_weights=False)[0])
    assert not ExportAttention.supports(torch.nn.MultiheadAttention(64, 4, batch_first=False))
    assert not ExportAttention.supports(torch.nn.MultiheadAttention(64, 4, batch_first=True, add_bias_kv=True))


def test_export_friendly_swaps_and_restores(tiny_checkpoint):
    model = load_model(tiny_checkpoint)
    blocks = model.visual.transformer.resblocks
    before = [type(b) for b in blocks] + [type(b.attn) for b in blocks] + [type(model.visual.conv1)]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = FusedEncoder(model)(x)
        with export_friendly(model) as n:
            assert n == {"attention": len(blocks), "patch_embed": 1, "cls_only_last_block": 1}
            assert isinstance(blocks[-1], ClsOnlyLastBlock) and isinstance(model.visual.conv1, PatchEmbedMatMul)
            assert all(isinstance(b.attn, ExportAttention) for b in blocks[:-1])
            got = FusedEncoder(model)(x)
    assert [type(b) for b in blocks] + [type(b.attn) for b in blocks] + [type(model.visual.conv1)] == before
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_patch_embed_matmul_equals_conv():
    torch.manual_seed(0)
    for bias in (False, True):
        conv = torch.nn.Conv2d(3, 16, kernel_size=8, stride=8, bias=bias)
        assert PatchEmbedMatMul.supports(conv)
        x = torch.randn(2, 3, 32, 48)
        with torch.no_grad():
            torch.testing.assert_close(PatchEmbedMatMul(conv)(x), conv(x), atol=1e-5, rtol=1e-5)
    assert not PatchEmbedMatMul.supports(torch.nn.Conv2d(3, 16, kernel_size=8, stride=4))
    assert not PatchEmbedMatMul.supports(torch.nn.Conv2d(3, 16, kernel_size=8, stride=8, padding=1))


def test_cls_only_last_block_equals_class_row(tiny_checkpoint):
    model = load_model(tiny_checkpoint)
    assert ClsOnlyLastBlock.supports(model.visual)
    block = model.visual.transformer.resblocks[-1]
    x = torch.randn(3, 17, block.ln_1.normalized_shape[0])
    with torch.no_grad():
        ref = block(x)[:, :1]
        got = ClsOnlyLastBlock(block)(x)
    assert got.shape == (3, 1, x.shape[-1])
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_tail_nodes_are_the_head(exported):
    m = onnx.load(str(exported["out"] / "model.onnx"), load_external_data=False)
    tail = set(tail_nodes(m))
    ops = {n.op_type for n in m.graph.node if n.name in tail}
    assert {"Log", "Tanh"} <= ops  # artanh / tanh of the Möbius maps
    assert "Conv" not in ops and "Softmax" not in ops and "LayerNormalization" not in ops
    assert m.graph.node[-1].name in tail


def test_opset_17_uses_the_torchscript_exporter(tmp_path):
    out = tmp_path / "op17"
    res = run_export(ExportConfig(out=out, head="none", model_name="TKI-Tiny-ViT", precisions=("fp32", "fp16"),
                                  opset=17, calib_images=image_folder(tmp_path / "img", None, n=4), val_count=4,
                                  timing_rounds=1, time_torch=False, progress=False, text=False))
    m = onnx.load(str(out / "model.onnx"), load_external_data=False)
    assert [(o.domain, o.version) for o in m.opset_import if o.domain in STANDARD_DOMAINS] == [("", 17)]
    assert {n.domain for n in m.graph.node} <= STANDARD_DOMAINS
    assert tail_nodes(m)  # the final normalisation is found from the TorchScript node names
    assert res.parity["fp32"].passed and res.parity["fp16"].passed
    assert ModelMetadata.load(out).opset == 17


def test_tki_head_without_head_nodes_fails_clearly(exported, tmp_path, monkeypatch):
    """A graph whose head cannot be found must not be converted / quantised with the head in fp16 / int8."""
    from tki_sdk.export import quantize
    from tki_sdk.export.onnx_export import ExportError

    src = exported["out"] / "model.onnx"
    monkeypatch.setattr(quantize, "tail_nodes", lambda model: [])
    for fn in (lambda: quantize.convert_fp16(src, tmp_path / "a.onnx", head="tki"),
               lambda: quantize.quantize_int8_dynamic(src, tmp_path / "b.onnx", head="tki")):
        with pytest.raises(ExportError, match="no head nodes") as e:
            fn()
        assert "\n" not in str(e.value)
    assert not (tmp_path / "a.onnx").exists() and not (tmp_path / "b.onnx").exists()
    with pytest.raises(ExportError, match="model.onnx: no head nodes"):
        run_export(ExportConfig(out=tmp_path / "o", checkpoint=exported["checkpoint"], precisions=("fp32", "fp16"),
                                val_count=2, timing_rounds=1, time_torch=False, progress=False), model=exported["model"])
    assert not (tmp_path / "o" / "tki.json").exists()
    quantize.convert_fp16(src, tmp_path / "c.onnx", head="none")  # vanilla CLIP has no head to keep


def test_failed_reexport_leaves_the_previous_export_untouched(exported, tmp_path, monkeypatch):
    from tki_sdk.export import validate
    from tki_sdk.export.calibration import NoImagesError

    out = tmp_path / "models"
    base = dict(out=out, calib_images=exported["calib"], calib_count=4, val_count=2, timing_rounds=1,
                time_torch=False, progress=False, text=False)
    run_export(ExportConfig(precisions=("fp32", "fp16"), **base), model=exported["model"])

    def snapshot() -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != "parity.json"}

    before = snapshot()
    assert {"tki.json", "model.onnx", "model.fp16.onnx"} <= set(before)
    other = load_model(None, head="none", model_name="TKI-Tiny-ViT")  # a different model.onnx if it were written

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(NoImagesError):
        run_export(ExportConfig(precisions=("fp32",), **{**base, "calib_images": bad}), model=other)
    assert snapshot() == before

    monkeypatch.setitem(validate.THRESHOLDS, "fp32", 1.5)  # cosine <= 1: fp32 cannot pass
    with pytest.raises(ParityError):
        run_export(ExportConfig(precisions=("fp32",), **base), model=other)
    assert json.loads((out / "parity.json").read_text())["passed"] is False
    monkeypatch.undo()
    assert snapshot() == before
    assert not [p for p in out.iterdir() if p.name.startswith(".tki-export-")]
    md = ModelMetadata.load(out)
    assert md.head == "tki" and set(md.artifacts) == {"fp32", "fp16"}
    res = validate_export(out, exported["model"], threads=1)
    assert all(r.passed and not r.notes for r in res.values())

    # a successful re-export replaces the files and drops artifacts the new tki.json does not list
    run_export(ExportConfig(precisions=("fp32",), **base), model=other)
    md = ModelMetadata.load(out)
    assert md.head == "none" and set(md.artifacts) == {"fp32"}
    assert not (out / "model.fp16.onnx").exists()
    assert md.artifacts["fp32"]["sha256"] == hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()


def test_tki_json_names_the_image_source(exported):
    md = ModelMetadata.load(exported["out"])
    calib = exported["calib"]
    c = md.artifacts["int8"]["calibration"]
    n_files = len(list(calib.iterdir()))
    assert (c["folder"], c["origin"], c["files"], c["count"], c["validation"]) == (str(calib), "--calib-images", n_files, 16, 8)
    assert c["used_by"].startswith("static_qdq" if md.artifacts["int8"]["scheme"] == "static_qdq" else "none")
    assert md.extra["export"]["images"] == {k: v for k, v in c.items() if k not in ("count", "used_by")}
    groups = json.loads((exported["out"] / "parity.json").read_text())["groups"]
    assert groups["images"]["source"] == c["description"] and str(calib) in c["description"]


def test_default_images_come_from_tki_pacs_dir_else_are_generated(exported, tmp_path, monkeypatch):
    from tki_sdk.export import calibration, pipeline

    pre = exported["model"].metadata_fields()["preprocess"]
    cfg = ExportConfig(out=tmp_path / "o", precisions=("fp32", "int8"), calib_count=3, val_count=2)
    folder = image_folder(tmp_path / "pacs", None, n=5)
    monkeypatch.setenv("TKI_PACS_DIR", str(folder))
    assert calibration.default_image_source() == (folder, "$TKI_PACS_DIR")
    cal, val, src = pipeline._images(cfg, pre)
    assert (src["folder"], src["origin"], src["files"], len(cal), len(val)) == (str(folder), "$TKI_PACS_DIR", 5, 3, 2)
    assert src["description"].startswith(f"{folder} ($TKI_PACS_DIR; 5 images")

    monkeypatch.setenv("TKI_PACS_DIR", str(tmp_path / "missing"))
    monkeypatch.setattr(calibration, "DEFAULT_PACS_DIR", tmp_path / "no_pacs")
    cal, val, src = pipeline._images(cfg, pre)
    assert src["folder"] is None and src["origin"] == "generated" and (len(cal), len(val)) == (3, 2)
    assert src["description"].startswith("generated images") and "is not a folder" in src["description"]
