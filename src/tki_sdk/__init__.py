"""tki-sdk: cross-domain image retrieval with Text-driven Knowledge Integration (TKI, ICML 2024).

This module imports nothing heavy: ``import tki_sdk.runtime`` works where torch is not
installed. Training-side names (``TKIModel``, ``load_clip``, ...) resolve lazily on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "TKIModel": "tki_sdk.train.model",
    "load_clip": "tki_sdk.train.clip",
    "HyperbolicMLP": "tki_sdk.train.head",
    "train": "tki_sdk.train.trainer",
    "TrainConfig": "tki_sdk.train.trainer",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        return getattr(module, name)
    raise AttributeError(f"module 'tki_sdk' has no attribute {name!r}")
