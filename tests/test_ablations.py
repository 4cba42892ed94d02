"""The ablation switches of ``tki train``: what stage 1 optimises, the label generator, the fair-temperature
rule of the geometry ablation, and their record in config.json."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tki_sdk.train.clip import load_clip
from tki_sdk.common.checkpoint_config import CheckpointConfig
from tki_sdk.train.hyperbolic import expmap0
from tki_sdk.train.labels import random_labels, word_list
from tki_sdk.train.losses import class_consistency_loss, domain_diversity_loss
from tki_sdk.train.prompts import PromptBank
from tki_sdk.train.trainer import TrainConfig, agg_logits, train

from conftest import TINY_CLASSES, TINY_MODEL


def _cfg(out: Path, **kw) -> TrainConfig:
    base = dict(model_name=TINY_MODEL, classes=TINY_CLASSES, out=str(out), prompts=4,
                steps_expand=1, steps_aggregate=0, progress=False, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def _one_adam_step_reference(objective: str, lam: float = 1.0) -> torch.Tensor:
    """ν after one Adam step on the named objective, computed here from the loss functions (not the trainer)."""
    torch.manual_seed(3)
    gen = torch.Generator().manual_seed(3)
    clip = load_clip(TINY_MODEL, None, init_seed=0)
    bank = PromptBank(clip, TINY_CLASSES, 4, generator=gen)
    with torch.no_grad():
        cls_feats = bank.class_features()
    l_min = class_consistency_loss(bank.prompt_features(), cls_feats, 0.1)
    l_max = domain_diversity_loss(bank.domain_features(), 10.0, 0.5)
    loss = {"min": l_min, "max": lam * l_max, "both": l_min + lam * l_max}[objective]
    opt = torch.optim.Adam([bank.domain_vectors], lr=0.005)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return bank.domain_vectors.detach().float()


def _initial_vectors() -> torch.Tensor:
    torch.manual_seed(3)
    gen = torch.Generator().manual_seed(3)
    return PromptBank(load_clip(TINY_MODEL, None, init_seed=0), TINY_CLASSES, 4, generator=gen).domain_vectors.detach()


def test_stage1_optimises_exactly_the_chosen_losses(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    got = {}
    for losses in ("both", "min", "max", "none"):
        out = train(_cfg(tmp_path / losses, losses=losses))
        got[losses] = load_file(str(out / "model.safetensors"))["domain_vectors"]
        assert json.loads((out / "config.json").read_text())["stage1_losses"] == losses
        curves = json.loads((out / "train_curves.json").read_text())
        if losses == "none":
            assert curves["expand"] == []
        else:
            rec = curves["expand"][0]
            want = {"both": rec["L_min"] + rec["L_max"], "min": rec["L_min"], "max": rec["L_max"]}[losses]
            assert rec["L_opt"] == pytest.approx(want, rel=1e-6)
    for objective in ("both", "min", "max"):
        torch.testing.assert_close(got[objective], _one_adam_step_reference(objective), rtol=0, atol=1e-6)
    torch.testing.assert_close(got["none"], _initial_vectors(), rtol=0, atol=0)
    # The three objectives move ν differently (so the comparison above can fail).
    for a, b in (("both", "min"), ("both", "max"), ("min", "max")):
        assert (got[a] - got[b]).abs().max() > 1e-5


def test_stage1_weighs_l_max_by_lambda(tmp_path: Path) -> None:
    """L_exp = L_min + λ·L_max (eq. 5) with λ != 1: the recorded objective and the step ν takes both use λ."""
    from safetensors.torch import load_file

    lam = 0.25
    for losses in ("both", "max"):
        out = train(_cfg(tmp_path / losses, losses=losses, lam=lam))
        rec = json.loads((out / "train_curves.json").read_text())["expand"][0]
        assert rec["L_exp"] == pytest.approx(rec["L_min"] + lam * rec["L_max"], rel=1e-6)
        want = rec["L_min"] + lam * rec["L_max"] if losses == "both" else lam * rec["L_max"]
        assert rec["L_opt"] == pytest.approx(want, rel=1e-6)
        assert json.loads((out / "config.json").read_text())["losses"]["lambda"] == lam
    got = load_file(str(tmp_path / "both" / "model.safetensors"))["domain_vectors"]
    torch.testing.assert_close(got, _one_adam_step_reference("both", lam), rtol=0, atol=1e-6)
    # λ changes the step (so the comparison above fails when λ is dropped)
    assert (_one_adam_step_reference("both", lam) - _one_adam_step_reference("both", 1.0)).abs().max() > 1e-5


def _forms(s: str) -> set[str]:
    """A word up to case, separators and a plural s/es (a narrower rule than the generator's)."""
    s = s.lower().replace("_", " ").replace("-", " ").strip()
    return {s, s + "s", s + "es", s[:-1] if s.endswith("s") else s, s[:-2] if s.endswith("es") else s}


def test_random_labels_never_emit_a_true_label() -> None:
    words = word_list()
    assert len(words) == len(set(words)) >= 200
    # True classes that are themselves list words, in other spellings (case, plural, separators).
    true = [w.upper() for w in words[:60]] + [w + "s" for w in words[60:100]] + ["sea-shell", "Light_House", "dog"]
    true_forms = set().union(*(_forms(c) for c in true))
    seen = set()
    for seed in range(40):
        got = random_labels(true, seed)
        assert len(got) == len(true) == len(set(got))
        assert all(w in words for w in got)
        assert not any(_forms(w) & true_forms for w in got)
        assert "lighthouse" not in got and "seashell" not in got  # contained / joined forms count as overlap
        assert random_labels(true, seed) == got  # seeded
        seen.add(tuple(got))
    assert len(seen) == 40  # seeds give different draws
    with pytest.raises(ValueError, match="--labels true"):
        random_labels(words[:200], 0)  # too few words left


def test_random_label_run_records_its_words(tmp_path: Path) -> None:
    out = train(_cfg(tmp_path / "r", labels="random", label_seed=7))
    cfg = CheckpointConfig.load(out)
    assert cfg.classes == TINY_CLASSES  # the true classes stay the checkpoint's classes
    lab = cfg.labels
    assert lab["strategy"] == "random" and lab["seed"] == 7 and lab["prompt_labels"] == random_labels(TINY_CLASSES, 7)
    assert len(lab["word_list_sha256"]) == 64


def test_fair_temperature_rule(tmp_path: Path) -> None:
    c, tau = 0.5, 0.1
    bound = 1 / (c * tau)
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(12, 16, generator=gen, dtype=torch.float64)
    eu = _cfg(tmp_path / "e", geometry="euclidean", curvature=c, tau=tau)
    hy = _cfg(tmp_path / "h", geometry="hyperbolic", curvature=c, tau=tau)
    raw = _cfg(tmp_path / "w", geometry="euclidean", curvature=c, tau=tau, temperature_rule="as_written")
    # Matched Euclidean logits: cos/(c tau), whatever the output norm; bounded by the hyperbolic bound.
    cos = F.normalize(z, dim=-1) @ F.normalize(z, dim=-1).T
    torch.testing.assert_close(agg_logits(z, eu), cos / (c * tau))
    torch.testing.assert_close(agg_logits(1000 * z, eu), agg_logits(z, eu))
    assert agg_logits(z, eu).abs().max() <= bound + 1e-9
    # Hyperbolic ball logits stay below the same bound and reach it at the boundary, where they equal the
    # matched Euclidean logits of the same directions.
    inner = expmap0(0.3 * z, c)
    edge = expmap0(50 * z, c)  # tanh saturates: points at the ball's edge (radius 1/sqrt(c))
    assert agg_logits(inner, hy).abs().max() < 0.9 * bound
    assert agg_logits(edge, hy).abs().max() <= bound + 1e-9
    torch.testing.assert_close(agg_logits(edge, hy), agg_logits(z, eu), atol=1e-3 * bound, rtol=0)
    # As written, Euclidean logits grow with the output norm: no bound.
    assert agg_logits(10 * z, raw).abs().max() > 10 * bound
    # The run records the rule it trained with.
    rec = json.loads((train(_cfg(tmp_path / "eu", geometry="euclidean", curvature=c, tau=tau)) / "config.json")
                     .read_text())["aggregation"]
    assert rec["similarity"] == "cosine" and rec["tau"] == pytest.approx(c * tau) and rec["logit_bound"] == pytest.approx(bound)
    rec = json.loads((train(_cfg(tmp_path / "hy", curvature=c, tau=tau)) / "config.json").read_text())["aggregation"]
    assert rec["similarity"] == "dot" and rec["tau"] == pytest.approx(tau) and rec["logit_bound"] == pytest.approx(bound)


def test_cli_train_switches(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from tki_sdk.cli.main import main

    out = tmp_path / "ck"
    code = main(["train", "--model", TINY_MODEL, "--classes", ",".join(TINY_CLASSES), "--out", str(out),
                 "--prompts", "3", "--steps-expand", "1", "--steps-aggregate", "1", "--losses", "min",
                 "--labels", "random", "--label-seed", "2", "--geometry", "euclidean", "--no-progress"])
    assert code == 0
    cfg = CheckpointConfig.load(out)
    assert (cfg.stage1_losses, cfg.labels["strategy"], cfg.head["geometry"], cfg.prompts) == ("min", "random", "euclidean", 3)
    assert main(["train", "--model", TINY_MODEL, "--classes", "a", "--out", str(out), "--losses", "neither"]) == 2
    assert "--losses" in capsys.readouterr().err
