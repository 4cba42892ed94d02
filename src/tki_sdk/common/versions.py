"""Installed package versions, recorded in checkpoints, exports and benchmark results."""
from __future__ import annotations

from collections.abc import Iterable
from importlib import metadata as _md

__all__ = ["package_versions", "TRAIN_DISTRIBUTIONS", "EXPORT_DISTRIBUTIONS"]

#: Distributions that shape a trained model's numbers (recorded in ``config.json``).
TRAIN_DISTRIBUTIONS = ("tki-sdk", "torch", "open-clip-torch", "geoopt", "safetensors", "numpy")
#: Distributions that shape an export beyond the training ones (recorded in ``tki.json``).
EXPORT_DISTRIBUTIONS = ("onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "tensorrt")


def package_versions(distributions: Iterable[str] = TRAIN_DISTRIBUTIONS) -> dict[str, str]:
    """``{distribution: version}`` for each installed distribution of ``distributions`` (absent ones left out)."""
    out: dict[str, str] = {}
    for name in distributions:
        try:
            out[name] = _md.version(name)
        except _md.PackageNotFoundError:
            pass
    return out
