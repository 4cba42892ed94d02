"""Two-stage training on the tiny model: losses fall, runs are deterministic, checkpoints round-trip."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tki_sdk.common.errors import ConfigError
import torch

from tki_sdk.train.checkpoint import CheckpointError
from tki_sdk.train.model import TKIModel
from tki_sdk.train.trainer import TrainConfig, train

from conftest import TINY_CLASSES, TINY_MODEL


def _cfg(out: Path, **kw) -> TrainConfig:
    base = dict(model_name=TINY_MODEL, classes=TINY_CLASSES, out=str(out), prompts=4,
                steps_expand=30, steps_aggregate=60, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def test_short_run_lowers_both_losses(tmp_path: Path) -> None:
    out = train(_cfg(tmp_path / "ck"))
    curves = json.loads((out / "train_curves.json").read_text())
    exp, agg = curves["expand"], curves["aggregate"]
    assert len(exp) == 30 and len(agg) == 60
    assert exp[-1]["L_exp"] < 0.8 * exp[0]["L_exp"]
    assert agg[-1]["L_agg"] < 0.8 * agg[0]["L_agg"]
    for rec in exp:  # eq. 5 with lambda = 1
        assert rec["L_exp"] == pytest.approx(rec["L_min"] + rec["L_max"], rel=1e-5)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["classes"] == TINY_CLASSES and cfg["prompts"] == 4
    assert cfg["weights"]["source"] == "random" and cfg["head"]["curvature"] == 1.0
    assert cfg["losses"] == {"tau": 0.1, "lambda": 1.0, "alpha": 10.0, "mu": 0.5, "agg_space": "ball"}
    assert "torch" in cfg["versions"]


def test_stage1_moves_only_domain_vectors_and_is_deterministic(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    a = load_file(str(train(_cfg(tmp_path / "a", steps_expand=3, steps_aggregate=3, seed=5)) / "model.safetensors"))
    b = load_file(str(train(_cfg(tmp_path / "b", steps_expand=3, steps_aggregate=3, seed=5)) / "model.safetensors"))
    c = load_file(str(train(_cfg(tmp_path / "c", steps_expand=3, steps_aggregate=3, seed=6)) / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["domain_vectors"], c["domain_vectors"])
    assert set(a) == {"domain_vectors", "head.layers.0.weight", "head.layers.0.bias",
                      "head.layers.1.weight", "head.layers.1.bias"}


def test_classes_per_step_and_options(tmp_path: Path) -> None:
    out = train(_cfg(tmp_path / "ck", steps_expand=4, steps_aggregate=4, classes_per_step=2,
                     geometry="euclidean", agg_space="tangent_cosine", head_depth=3, curvature=0.5,
                     input_norm=False))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["optim"]["classes_per_step"] == 2 and cfg["head"]["geometry"] == "euclidean"
    assert cfg["head"]["input_norm"] is False
    model = TKIModel.from_checkpoint(out)
    assert len(model.head.layers) == 3 and model.head.config.input_norm is False


def test_checkpoint_roundtrip_gives_identical_embeddings(tiny_checkpoint: Path) -> None:
    a, b = TKIModel.from_checkpoint(tiny_checkpoint), TKIModel.from_checkpoint(tiny_checkpoint)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        za, zb = a.encode_image(x), b.encode_image(x)
    assert torch.equal(za, zb)
    torch.testing.assert_close(za.norm(dim=-1), torch.ones(3))
    # encode_image is h applied to CLIP's visual feature, normalised (ARCHITECTURE.md, "From tki train to a search hit")
    with torch.no_grad():
        z = a.head(a.clip.model.encode_image(x))
    torch.testing.assert_close(za, z / z.norm(dim=-1, keepdim=True))
    meta = a.metadata_fields()
    assert meta["head"] == "tki" and meta["output_space"] == "ball_l2" and meta["embedding_dim"] == 32
    assert len(meta["checkpoint"]["sha256"]) == 64


def test_vanilla_model_is_normalised_clip(tiny_checkpoint: Path) -> None:
    v = TKIModel.vanilla(TINY_MODEL)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        f = v.clip.model.encode_image(x)
        torch.testing.assert_close(v.encode_image(x), f / f.norm(dim=-1, keepdim=True))
    assert v.metadata_fields()["output_space"] == "clip_l2"


def test_corrupt_and_mismatched_checkpoints(tiny_checkpoint: Path, tmp_path: Path) -> None:
    import shutil

    with pytest.raises(CheckpointError, match="not a folder"):
        TKIModel.from_checkpoint(tmp_path / "nothing")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="not the weights file config.json was written with"):
        TKIModel.from_checkpoint(broken)
    cfg = json.loads((broken / "config.json").read_text())
    del cfg["weights_file_sha256"]
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="corrupt"):
        TKIModel.from_checkpoint(broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json is corrupt"):
        TKIModel.from_checkpoint(broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        TKIModel.from_checkpoint(broken)
    # trained on a weights file; another file with other bytes is refused
    w1, w2 = tmp_path / "w1.pt", tmp_path / "w2.pt"
    from tki_sdk.train.clip import load_clip

    torch.save(load_clip(TINY_MODEL, init_seed=1).model.state_dict(), w1)
    torch.save(load_clip(TINY_MODEL, init_seed=2).model.state_dict(), w2)
    out = train(_cfg(tmp_path / "file_ck", pretrained=str(w1), steps_expand=1, steps_aggregate=1))
    assert TKIModel.from_checkpoint(out).clip.weights["sha256"] == json.loads((out / "config.json").read_text())["weights"]["sha256"]
    with pytest.raises(CheckpointError, match="not the ones its head was trained on"):
        TKIModel.from_checkpoint(out, pretrained=str(w2))
    # trained on random init: any weights file is refused
    with pytest.raises(CheckpointError, match=r"random-init CLIP \(seed 0\)"):
        TKIModel.from_checkpoint(tiny_checkpoint, pretrained=str(w1))


def test_bad_train_config(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="class list is empty"):
        train(_cfg(tmp_path / "x", classes=[]))
    with pytest.raises(ValueError, match="twice"):
        train(_cfg(tmp_path / "x", classes=["dog", "dog"]))
    with pytest.raises(ConfigError, match="^prompts must be at least 2") as e:
        train(_cfg(tmp_path / "x", prompts=1))
    assert e.value.field == "prompts"  # the field, not a flag: the CLI maps it (tki_sdk.cli.main.train_flag)
    with pytest.raises(ConfigError) as e:
        train(_cfg(tmp_path / "x", temperature_rule="exact"))
    assert e.value.field == "temperature_rule"
