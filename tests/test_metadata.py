"""tki.json: round trip, and a fingerprint that identifies the embedding function and nothing else."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

from tki_sdk.common.model_metadata import ModelMetadata

BASE = {
    "model_name": "ViT-B-32",
    "embedding_dim": 512,
    "preprocess": {"size": [224, 224], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
    "head": "tki",
    "head_config": {"in_dim": 512, "depth": 2, "curvature": 1.0},
    "weights": {"source": "file", "ref": "/a/w.pt", "sha256": "ab" * 32},
    "checkpoint": {"path": "/a/ckpt", "sha256": "cd" * 32},
    "artifacts": {"fp32": {"file": "model.onnx", "ms_per_image": 20.0}},
    "export": {"created": "2026-01-01"},
}


def test_roundtrip_keeps_unknown_fields(tmp_path: Path) -> None:
    md = ModelMetadata.from_dict(copy.deepcopy(BASE))
    md.save(tmp_path)
    back = ModelMetadata.load(tmp_path)
    assert back.to_dict() == md.to_dict() and back.extra["export"] == {"created": "2026-01-01"}


def test_fingerprint_ignores_paths_timings_and_artifacts() -> None:
    a = ModelMetadata.from_dict(copy.deepcopy(BASE))
    b = copy.deepcopy(BASE)
    b["weights"]["ref"] = "/elsewhere/w.pt"
    b["checkpoint"]["path"] = "/elsewhere/ckpt"
    b["artifacts"] = {"int8": {"file": "model.int8.onnx", "ms_per_image": 9.0}}
    b["export"] = {"created": "2026-02-02"}
    b["default_precision"] = "int8"
    assert ModelMetadata.from_dict(b).fingerprint() == a.fingerprint()


@pytest.mark.parametrize(
    "path, value",
    [
        (("weights", "sha256"), "ef" * 32),
        (("checkpoint", "sha256"), "01" * 32),
        (("head_config", "curvature"), 0.5),
        (("preprocess", "size"), [256, 256]),
        (("model_name",), "ViT-L-14"),
        (("head",), "none"),
    ],
)
def test_fingerprint_changes_with_the_embedding_function(path: tuple[str, ...], value: object) -> None:
    d = copy.deepcopy(BASE)
    target = d
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert ModelMetadata.from_dict(d).fingerprint() != ModelMetadata.from_dict(copy.deepcopy(BASE)).fingerprint()


def test_missing_fields_are_named() -> None:
    with pytest.raises(ValueError, match="embedding_dim"):
        ModelMetadata.from_dict({"model_name": "x", "preprocess": {}})
