"""``config.json`` of a ``tki train`` checkpoint folder, read and written through one dataclass.

Layout (``format`` 2)::

    {
      "format": 2,
      "model_name": "ViT-B-32",                         # open_clip architecture
      "weights": {"source": "random" | "file" | "tag", "ref": ..., "sha256": ..., "init_seed": 0},
      "classes": ["dog", ...], "prompts": 20, "prompt_template": "a [DOMAIN] style of [CLASS].",
      "losses": {"tau": 0.1, "lambda": 1.0, "alpha": 10.0, "mu": 0.5, "agg_space": "ball"},
      "optim": {"optimizer": "Adam", "lr_expand": ..., "lr_aggregate": ..., "steps_expand": ...,
                "steps_aggregate": ..., "classes_per_step": null, "seed": 0},
      "head": {"in_dim": 512, "hidden_dim": null, "out_dim": null, "depth": 2, "curvature": 1.0,
               "geometry": "hyperbolic", "activation": "relu", "input_norm": true},   # the one head record
      "preprocess": {...open_clip PreprocessCfg...},
      "versions": {...}, "curves": "train_curves.json",
      "run": {"device": "cpu", "full_context": false, "clip_init_seed": 0, "out": "..."},
      "stage1_losses": "both" | "min" | "max" | "none",          # what stage 1 optimised (Table 5)
      "labels": {"strategy": "true"} | {"strategy": "random", "seed": 0, "prompt_labels": [...],
                 "word_list": "label_words.txt", "word_list_sha256": ...},   # Table 6
      "aggregation": {"agg_space": "ball", "similarity": "dot" | "cosine", "tau": 0.1,
                      "logit_bound": 10.0, "rule": "matched" | "as_written"},  # L_agg as trained (Table 7)
      "weights_file_sha256": "<sha256 of model.safetensors>"
    }

``stage1_losses``, ``labels`` and ``aggregation`` came later within format 2; files without them load with
the values every earlier run had: both losses, the true class names, and ``aggregation`` empty (eq. 6 at
``losses.tau`` on ``losses.agg_space``).

The curvature and the embedding width are read from ``head`` (:attr:`CheckpointConfig.curvature`,
:attr:`CheckpointConfig.embedding_dim`). Format 1 files (which also carried top-level ``curvature`` and
``embedding_dim`` and a ``train_config`` copy of every option) still load: those copies are dropped, the
run facts nothing else records are kept in ``run``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tki_sdk.common.contract import ContractError, JsonContract, check_version, require

__all__ = ["CheckpointConfig", "CHECKPOINT_FORMAT", "CONFIG_FILE", "WEIGHTS_FILE", "CURVES_FILE"]

CHECKPOINT_FORMAT = 2
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CURVES_FILE = "train_curves.json"
_FIX = "train the checkpoint again with tki train"
#: Format-1 copies of facts recorded elsewhere, dropped on load.
_DERIVED_V1 = ("curvature", "embedding_dim", "train_config")
#: Options of a training run that no other field records (kept in ``run``).
RUN_KEYS = ("device", "full_context", "clip_init_seed", "out")


@dataclass
class CheckpointConfig(JsonContract):
    """Parsed ``config.json`` (see the module docstring). Unknown keys are kept in ``extra``."""

    FILE = CONFIG_FILE
    WHAT = "checkpoint config"
    FIX = _FIX

    model_name: str
    head: dict[str, Any]
    weights: dict[str, Any] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    prompts: int = 0
    prompt_template: str = "a [DOMAIN] style of [CLASS]."
    losses: dict[str, Any] = field(default_factory=dict)
    optim: dict[str, Any] = field(default_factory=dict)
    preprocess: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    curves: str = CURVES_FILE
    run: dict[str, Any] = field(default_factory=dict)
    weights_file_sha256: str | None = None
    stage1_losses: str = "both"
    labels: dict[str, Any] = field(default_factory=lambda: {"strategy": "true"})
    aggregation: dict[str, Any] = field(default_factory=dict)
    format: int = CHECKPOINT_FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def curvature(self) -> float | None:
        """c of the ball of curvature -c, or None for a Euclidean head."""
        if self.head.get("geometry", "hyperbolic") != "hyperbolic":
            return None
        return float(self.head.get("curvature", 1.0))

    @property
    def embedding_dim(self) -> int:
        """Width of the head's output: ``out_dim``, else ``in_dim``."""
        return int(self.head.get("out_dim") or self.head["in_dim"])

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = CONFIG_FILE) -> "CheckpointConfig":
        if not isinstance(d, dict):
            raise ContractError(f"{where} is not a JSON object; {_FIX}")
        version = check_version(d.get("format", 1), CHECKPOINT_FORMAT, where)
        require(d, ("model_name", "head"), where, "it is not a tki checkpoint config; " + _FIX)
        if not isinstance(d["head"], dict) or "in_dim" not in d["head"]:
            raise ContractError(f"{where}: head is not a head description (no in_dim); {_FIX}")
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        run = dict(d.get("run") or {})
        if not run and isinstance(d.get("train_config"), dict):
            run = {k: d["train_config"][k] for k in RUN_KEYS if k in d["train_config"]}
        kwargs = {k: v for k, v in d.items() if k in known and k not in ("run", "format")}
        extra = {k: v for k, v in d.items() if k not in known and k not in _DERIVED_V1}
        try:
            return cls(**kwargs, run=run, format=version, extra=extra)
        except TypeError as e:
            raise ContractError(f"{where}: {e}; {_FIX}") from None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        return self.with_extra({"format": d.pop("format"), **d}, extra)
