"""``TrainConfig``: everything ``tki train`` can set, with the one copy of every training default (torch-free).

Defaults follow the paper where it gives a value (Adam, lr 0.005, τ 0.1, λ 1, P 20); the rest is stated
with its reason beside the constant. The ``tki train`` flags and their ``--help`` defaults are generated from
this dataclass (:mod:`tki_sdk.cli.main`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tki_sdk.common.errors import ConfigError

__all__ = ["TrainConfig", "DEFAULT_ALPHA", "DEFAULT_MU", "DEFAULT_TAU", "STAGE1_LOSSES", "TEMPERATURE_RULES",
           "LABEL_STRATEGIES", "AGG_SPACES", "GEOMETRIES"]

#: Default α of eq. 1. The paper gives none. With cosine similarities in [-1, 1], α sets how sharply the
#: softplus penalises similarity above μ: α = 10 makes the loss ≈ α·(s-μ) well above μ and ≈ 0 well below,
#: a smooth hinge (the common choice for this "log(1+e^{α(s-μ)})" form, e.g. binomial deviance losses).
DEFAULT_ALPHA = 10.0
#: Default μ of eq. 1: the similarity margin below which domain prompts count as distinct. Prompts
#: "A [DOMAIN] style of" share most tokens, so their CLIP features start with cosine close to 1; μ = 0.5
#: pushes them apart without asking for orthogonality the shared words make impossible.
DEFAULT_MU = 0.5
#: τ of eqs. 3 and 6 (paper: 0.1).
DEFAULT_TAU = 0.1

#: What stage 1 optimises (paper Table 5): ``both`` L_min + λ·L_max (eq. 5), ``min`` L_min alone,
#: ``max`` λ·L_max alone, ``none`` nothing (stage 1 is skipped; ν keeps its initialisation).
STAGE1_LOSSES = ("both", "min", "max", "none")

#: How the geometry ablation (paper Table 7) sets L_agg's temperature. ``matched`` (default): the logits of
#: the Euclidean head have the same bound as the hyperbolic head's; ``as_written``: eq. 6 at τ for both.
TEMPERATURE_RULES = ("matched", "as_written")

#: ``true``: the given class names (strategy 1); ``random``: seeded words that overlap none of them (strategy 2).
LABEL_STRATEGIES = ("true", "random")

#: The head's geometry (paper Table 7): Poincaré-ball Möbius layers, or their Euclidean counterparts.
GEOMETRIES = ("hyperbolic", "euclidean")

#: What L_agg's dot product sees. "ball" is eq. 6 as written: raw Poincaré-ball points h(t).
#: "tangent_cosine" maps them back with logmap0 and L2-normalises (a cosine SupCon): ball points have norm
#: < 1/sqrt(c), so raw dot products are bounded by 1/c and the logits by 1/(c·τ); the cosine variant makes
#: the logit range independent of c and of how deep in the ball the points sit.
AGG_SPACES = ("ball", "tangent_cosine")


@dataclass
class TrainConfig:
    """Everything ``tki train`` can set. Defaults follow the paper where it gives a value."""

    model_name: str
    classes: list[str]
    out: str
    pretrained: str | None = None
    prompts: int = 20
    steps_expand: int = 200
    steps_aggregate: int = 500
    lr_expand: float = 0.005
    lr_aggregate: float = 0.005
    tau: float = DEFAULT_TAU
    lam: float = 1.0
    alpha: float = DEFAULT_ALPHA
    mu: float = DEFAULT_MU
    classes_per_step: int | None = None
    head_depth: int = 2
    head_hidden: int | None = None
    curvature: float = 1.0
    geometry: str = "hyperbolic"
    activation: str = "relu"
    input_norm: bool = True
    agg_space: str = "ball"
    losses: str = "both"
    labels: str = "true"
    label_seed: int = 0
    temperature_rule: str = "matched"
    seed: int = 0
    clip_init_seed: int = 0
    device: str = "cpu"
    full_context: bool = False
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Bounds and choices of every field; :class:`~tki_sdk.common.errors.ConfigError` names the field.
        (Whether a CUDA device is visible is checked by :func:`~tki_sdk.train.trainer.train`.)"""
        if not self.classes:
            raise ConfigError("classes", "the class list is empty; give at least one class name")
        if len(set(self.classes)) != len(self.classes):
            dup = next(c for c in self.classes if self.classes.count(c) > 1)
            raise ConfigError("classes", f"class {dup!r} appears twice in the class list")
        if self.prompts < 2:
            raise ConfigError("prompts", f"must be at least 2 (L_max compares domains), got {self.prompts}")
        for name in ("steps_expand", "steps_aggregate"):
            if getattr(self, name) < 0:
                raise ConfigError(name, f"must be >= 0, got {getattr(self, name)}")
        for name, allowed in (("losses", STAGE1_LOSSES), ("labels", LABEL_STRATEGIES),
                              ("temperature_rule", TEMPERATURE_RULES), ("agg_space", AGG_SPACES),
                              ("geometry", GEOMETRIES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(name, f"must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        if self.classes_per_step is not None and self.classes_per_step < 1:
            raise ConfigError("classes_per_step", f"must be >= 1, got {self.classes_per_step}")
