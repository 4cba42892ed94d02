"""Two-stage TKI training ("aggregation after expansion"), text only, on a frozen CLIP.

Stage 1, domain expansion (section 4.1): learn only the P domain word vectors ν with
L_exp = L_min + λ·L_max (eq. 5). Stage 2, domain aggregation (section 4.2): freeze ν, compute the P×C
prompt features t_pi once, and train the head h with L_agg (eq. 6). Paper defaults: Adam, lr 0.005,
τ 0.1, λ 1, P 20. Step counts are not in the paper; the defaults (200 + 500) let both losses flatten for
PACS-sized class lists (see the saved curves).

Ablation switches (the paper's Tables 5-7 and Figure 5), each recorded in ``config.json``:
``losses`` (what stage 1 optimises: both / min / max / none, :func:`~.losses.stage1_objective`),
``labels`` (true class names or seeded random non-overlapping words, :mod:`.labels`), ``geometry`` with
``temperature_rule`` (how L_agg's temperature keeps the hyperbolic / Euclidean comparison fair,
:func:`~.losses.aggregation_similarity`), and ``prompts`` (P).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tki_sdk.train import hyperbolic as H
from tki_sdk.train.checkpoint import save_checkpoint
from tki_sdk.common.checkpoint_config import CURVES_FILE, RUN_KEYS, CheckpointConfig
from tki_sdk.common.versions import package_versions
from tki_sdk.train.clip import load_clip
from tki_sdk.common.atomic import atomic_write_text
from tki_sdk.train.head import HeadConfig, HyperbolicMLP
from tki_sdk.train.labels import prompt_labels
from tki_sdk.common.errors import ConfigError
from tki_sdk.common.progress import progress_bar
from tki_sdk.train.config import AGG_SPACES, TrainConfig
from tki_sdk.train.losses import aggregation_loss, aggregation_similarity, expansion_loss, stage1_objective
from tki_sdk.train.prompts import PromptBank

__all__ = ["TrainConfig", "AGG_SPACES", "train", "aggregation_rule", "agg_logits"]

def _class_batch(n: int, per_step: int | None, gen: torch.Generator) -> torch.Tensor | None:
    if per_step is None or per_step >= n:
        return None
    return torch.randperm(n, generator=gen)[:per_step].sort().values


def aggregation_rule(cfg: TrainConfig) -> dict[str, Any]:
    """Similarity, temperature and logit bound of L_agg for this run (:func:`~.losses.aggregation_similarity`)."""
    return aggregation_similarity(cfg.geometry, cfg.agg_space, cfg.tau, cfg.curvature, cfg.temperature_rule)


def agg_input(z: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """What L_agg's dot product sees: ``z`` itself ("dot"), or its L2-normalised tangent vector ("cosine";
    for ball points the direction of ``logmap0(z)`` is that of ``z``)."""
    if aggregation_rule(cfg)["similarity"] == "cosine":
        return F.normalize(H.logmap0(z, cfg.curvature) if cfg.geometry == "hyperbolic" else z, dim=-1)
    return z


def agg_logits(z: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """The logits L_agg sees for head outputs ``z [N, D]``: ``sim(z_i, z_j) / τ_agg`` ``[N, N]``."""
    x = agg_input(z, cfg)
    return (x @ x.T) / float(aggregation_rule(cfg)["tau"])


def _progress(total: int, desc: str, enabled: bool):
    return progress_bar(total, desc, unit="step", enabled=enabled)


def train(cfg: TrainConfig) -> Path:
    """Run both stages and write the checkpoint folder ``cfg.out``; returns its path."""
    cfg.validate()
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device", "cuda was asked for but no CUDA GPU is visible; use cpu")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    clip = load_clip(cfg.model_name, cfg.pretrained, device=device, init_seed=cfg.clip_init_seed)
    labels, labels_record = prompt_labels(cfg.classes, cfg.labels, cfg.label_seed)
    bank = PromptBank(clip, labels, cfg.prompts, generator=gen).to(device)
    n_cls = len(cfg.classes)
    curves: dict[str, Any] = {"expand": [], "aggregate": []}

    # Stage 1: domain expansion, only ν learns (skipped for losses "none": ν keeps its initialisation).
    opt = torch.optim.Adam([bank.domain_vectors], lr=cfg.lr_expand)
    with torch.no_grad():
        all_class_feats = bank.class_features(full_context=cfg.full_context)
    t_stage = time.perf_counter()
    steps_expand = 0 if cfg.losses == "none" else cfg.steps_expand
    with _progress(steps_expand, f"stage 1: domain expansion ({cfg.losses})", cfg.progress) as bar:
        for step in range(steps_expand):
            idx = _class_batch(n_cls, cfg.classes_per_step, gen)
            cls_feats = all_class_feats if idx is None else all_class_feats[idx.to(device)]
            prompt = bank.prompt_features(None if idx is None else idx.to(device), full_context=cfg.full_context)
            l_exp, l_min, l_max = expansion_loss(
                prompt, cls_feats, bank.domain_features(full_context=cfg.full_context),
                lam=cfg.lam, tau=cfg.tau, alpha=cfg.alpha, mu=cfg.mu,
            )
            loss = stage1_objective(l_min, l_max, cfg.losses, cfg.lam)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            rec = {"step": step, "L_exp": l_exp.item(), "L_min": l_min.item(), "L_max": l_max.item(),
                   "L_opt": loss.item()}
            curves["expand"].append(rec)
            bar.set_postfix(L_exp=f"{rec['L_exp']:.4f}", L_min=f"{rec['L_min']:.4f}", L_max=f"{rec['L_max']:.4f}")
            bar.update()
    curves["expand_seconds_per_step"] = (time.perf_counter() - t_stage) / max(steps_expand, 1)

    # Stage 2: ν frozen, prompt features computed once, head learns with L_agg.
    with torch.no_grad():
        prompt_feats = bank.prompt_features(full_context=cfg.full_context, chunk=1024).float()
    head_cfg = HeadConfig(
        in_dim=clip.embed_dim, hidden_dim=cfg.head_hidden, depth=cfg.head_depth, curvature=cfg.curvature,
        geometry=cfg.geometry, activation=cfg.activation, input_norm=cfg.input_norm,
    )
    head = HyperbolicMLP(head_cfg).to(device)
    rule = aggregation_rule(cfg)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr_aggregate)
    t_stage = time.perf_counter()
    with _progress(cfg.steps_aggregate, "stage 2: domain aggregation", cfg.progress) as bar:
        for step in range(cfg.steps_aggregate):
            idx = _class_batch(n_cls, cfg.classes_per_step, gen)
            feats = prompt_feats if idx is None else prompt_feats[:, idx.to(device)]
            z = head(feats)
            loss = aggregation_loss(agg_input(z, cfg), tau=float(rule["tau"]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            curves["aggregate"].append({"step": step, "L_agg": loss.item()})
            bar.set_postfix(L_agg=f"{loss.item():.4f}")
            bar.update()
    curves["aggregate_seconds_per_step"] = (time.perf_counter() - t_stage) / max(cfg.steps_aggregate, 1)

    config = CheckpointConfig(
        model_name=cfg.model_name,
        weights=clip.weights,
        classes=list(cfg.classes),
        prompts=cfg.prompts,
        prompt_template="a [DOMAIN] style of [CLASS].",
        losses={"tau": cfg.tau, "lambda": cfg.lam, "alpha": cfg.alpha, "mu": cfg.mu, "agg_space": cfg.agg_space},
        optim={
            "optimizer": "Adam", "lr_expand": cfg.lr_expand, "lr_aggregate": cfg.lr_aggregate,
            "steps_expand": cfg.steps_expand, "steps_aggregate": cfg.steps_aggregate,
            "classes_per_step": cfg.classes_per_step, "seed": cfg.seed,
        },
        head=head_cfg.to_dict(),
        preprocess=clip.preprocess_cfg,
        versions=package_versions(),
        curves=CURVES_FILE,
        run={k: getattr(cfg, k) for k in RUN_KEYS},
        stage1_losses=cfg.losses,
        labels=labels_record,
        aggregation={"agg_space": cfg.agg_space, **rule},
    )
    tensors = {"domain_vectors": bank.domain_vectors.detach().float()}
    tensors.update({f"head.{k}": v for k, v in head.state_dict().items()})
    out = save_checkpoint(cfg.out, tensors, config)
    atomic_write_text(out / CURVES_FILE, json.dumps(curves, indent=1) + "\n")
    return out
