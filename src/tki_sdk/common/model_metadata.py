"""``tki.json``: everything the runtime needs to know about an exported model, through one dataclass.

The export step writes it (``tki_sdk.export``), the runtime reads only it. Plain dataclasses and the
standard library, so it loads where torch is not installed.

Layout (``format_version`` 2)::

    {
      "format_version": 1,
      "model_name": "ViT-B-32",                # open_clip architecture name
      "weights": {"source": "random" | "file" | "tag", "ref": "...", "sha256": "..." | null},
      "checkpoint": {"path": "...", "sha256": "..."} | null,   # null for --head none
      "head": "tki" | "none",
      "head_config": {...} | null,             # the one head record: sizes, curvature, geometry (as config.json)
      "output_space": "ball_l2" | "clip_l2" | "ball" | "euclidean",   # what `embedding` holds:
                                               # unit vectors (TKI head / vanilla CLIP), or the raw head
                                               # output (`tki-export --embedding ball`)
      "metric": "cos" | "ip" | "poincare",     # how embeddings are compared (galleries follow it;
                                               # poincare uses head_config's curvature)
      "embedding_dim": 512,
      "preprocess": {"size": [224, 224], "mode": "RGB", "mean": [...], "std": [...],
                     "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0},
      "input_name": "pixel_values", "output_name": "embedding",
      "opset": 17,
      "artifacts": {"fp32": {"file": "model.onnx", "format": "onnx", "precision": "fp32", "bytes": 1234,
                             "sha256": "...", "parity_min_cosine": ..., ...}, ...},   # keys: common.artifacts
      "default_precision": "fp32",
      "versions": {"tki-sdk": "...", "torch": "...", "open-clip-torch": "...", "onnx": "...", ...},
      "export": {...},                         # how and when it was exported, the images used
      "text": {...} | null                     # the text encoder (optional; absent before text search)
    }

``text`` (optional; null or absent: the export embeds images only)::

    {"artifacts": {"text_fp32": {"file": "text.onnx", "role": "text", "format": "onnx", "bytes": ..,
                                 "sha256": "..", "parity_min_cosine": .., ...}},
     "default_precision": "text_fp32",
     "input_names": ["token_ids", "domain_vector", "domain_position"], "output_name": "text_embedding",
     "tokenizer": {"kind": "clip_bpe", "clean": "lower", "context_length": 77, "sot_token_id": 49406,
                   "eot_token_id": 49407, "vocab": {"file": "bpe_simple_vocab_16e6.txt.gz", "bytes": .., "sha256": ".."}},
     "domain_vectors": {"file": "domain_vectors.npy", "bytes": .., "sha256": "..", "shape": [P, W]} | null,
     "domain_prompt": {"prefix": "a", "placeholder": "x", "suffix": "style of", "end": "."},
     "default_query": "ensemble" | "a photo of a {}." | "raw", "not_exported": {"fp16": "why", ...}}

The curvature is read from ``head_config`` (:attr:`ModelMetadata.curvature`: None for a Euclidean head or
no head). Format 1 files, which also carried top-level ``curvature``, ``image_size`` and ``precisions``
copies, still load: the copies are dropped (they equal ``head_config``, ``preprocess.size`` and the
``artifacts`` keys). :meth:`ModelMetadata.fingerprint` is unchanged by the format change, so galleries
built with a format-1 export still accept its queries.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tki_sdk.common.atomic import sha256_file
from tki_sdk.common.contract import ContractError, JsonContract, check_version, require

__all__ = ["ModelMetadata", "PreprocessConfig", "sha256_file", "METADATA_FILE", "INPUT_NAME", "OUTPUT_NAME",
           "FORMAT_VERSION", "TEXT_INPUT_NAMES", "TEXT_OUTPUT_NAME"]

FORMAT_VERSION = 2
#: Format-1 copies of facts recorded elsewhere in the file, dropped on load.
_DERIVED_V1 = ("curvature", "image_size", "precisions")
METADATA_FILE = "tki.json"
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "embedding"
#: Inputs and output of the text graph (``tki.json`` ``text``).
TEXT_INPUT_NAMES = ("token_ids", "domain_vector", "domain_position")
TEXT_OUTPUT_NAME = "text_embedding"


@dataclass
class PreprocessConfig:
    """open_clip's eval preprocessing (``open_clip.PreprocessCfg``), as plain data.

    ``size`` is (height, width); ``resize_mode`` is open_clip's ("shortest", "longest",
    "squash"); ``interpolation`` is "bicubic", "bilinear" or "nearest".
    """

    size: tuple[int, int] = (224, 224)
    mode: str = "RGB"
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill_color: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessConfig":
        size = d.get("size", (224, 224))
        if isinstance(size, int):
            size = (size, size)
        return cls(
            size=(int(size[0]), int(size[1])),
            mode=str(d.get("mode", "RGB")),
            mean=tuple(float(v) for v in d.get("mean", cls.mean)),
            std=tuple(float(v) for v in d.get("std", cls.std)),
            interpolation=str(d.get("interpolation", "bicubic")),
            resize_mode=str(d.get("resize_mode", "shortest")),
            fill_color=int(d.get("fill_color", 0)),
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d


@dataclass
class ModelMetadata(JsonContract):
    """Parsed ``tki.json``. Unknown keys are kept in ``extra`` and written back unchanged."""

    FILE = METADATA_FILE
    WHAT = "model description"
    FIX = "re-export the model with tki-export"

    model_name: str
    embedding_dim: int
    preprocess: PreprocessConfig
    head: str = "tki"
    output_space: str = "ball_l2"
    metric: str = "cos"
    head_config: dict[str, Any] | None = None
    weights: dict[str, Any] = field(default_factory=dict)
    checkpoint: dict[str, Any] | None = None
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    opset: int | None = None
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    default_precision: str = "fp32"
    versions: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    #: The text encoder (see the module docstring); None for exports that embed images only.
    text: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def has_text(self) -> bool:
        """True when the export carries a text encoder (``text.artifacts`` is not empty)."""
        return isinstance(self.text, dict) and bool(self.text.get("artifacts"))

    @property
    def curvature(self) -> float | None:
        """c of the Poincaré ball (curvature -c) the head works in; None for a Euclidean head or no head."""
        hc = self.head_config or {}
        if self.head != "tki" or hc.get("geometry", "hyperbolic") != "hyperbolic":
            return None
        return float(hc.get("curvature", 1.0))

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = METADATA_FILE) -> "ModelMetadata":
        fix = "re-export the model with tki-export"
        if not isinstance(d, dict):
            raise ContractError(f"{where} is not a JSON object; {fix}")
        version = check_version(d.get("format_version", 1), FORMAT_VERSION, where)
        require(d, ("model_name", "embedding_dim", "preprocess"), where, fix)
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        kwargs = {k: v for k, v in d.items() if k in known}
        try:
            kwargs["preprocess"] = PreprocessConfig.from_dict(d["preprocess"])
            kwargs["embedding_dim"] = int(d["embedding_dim"])
        except (TypeError, ValueError, AttributeError, IndexError) as e:
            raise ContractError(f"{where}: preprocess / embedding_dim malformed ({e}); {fix}") from None
        kwargs["format_version"] = FORMAT_VERSION if version < FORMAT_VERSION else version
        if not isinstance(kwargs.get("artifacts", {}), dict):
            raise ContractError(f"{where}: artifacts is not an object; {fix}")
        if kwargs.get("text") is not None and not isinstance(kwargs["text"], dict):
            raise ContractError(f"{where}: text is not an object; {fix}")
        extra = {k: v for k, v in d.items() if k not in known and k not in _DERIVED_V1}
        return cls(**kwargs, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        if d.get("text") is None:
            d.pop("text", None)  # image-only exports keep the layout they always had
        extra = d.pop("extra")
        return self.with_extra(d, extra)

    @classmethod
    def load(cls, path: str | Path) -> "ModelMetadata":
        """Read ``tki.json`` from a file or from the export folder that holds it."""
        p = cls.path_in(path)
        if not p.is_file():
            raise FileNotFoundError(f"no {METADATA_FILE} at {p}; point at a folder written by tki-export")
        return super().load(p)

    def fingerprint(self) -> str:
        """SHA-256 identifying the embedding function: what a gallery records and checks queries against.

        Covers only what decides the embeddings: architecture, CLIP weights (their SHA-256, else the tag or
        random-init seed), the checkpoint's SHA-256, head, head config, output space, metric, dimension and
        preprocessing. Re-exporting the same checkpoint, moving files, timings and the artifact precision
        (fp32 / fp16 / int8 agree to their parity thresholds) leave it unchanged.
        """
        w = self.weights or {}
        weights = {"source": w.get("source"), "id": w.get("sha256") or w.get("ref") or w.get("init_seed")}
        identity = {
            "model_name": self.model_name,
            "weights": weights,
            "checkpoint_sha256": (self.checkpoint or {}).get("sha256"),
            "head": self.head,
            "head_config": self.head_config,
            "output_space": self.output_space,
            "metric": self.metric,
            "embedding_dim": self.embedding_dim,
            "preprocess": self.preprocess.to_dict(),
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
