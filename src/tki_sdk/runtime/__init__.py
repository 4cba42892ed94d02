"""Torch-free runtime: CLIP-exact preprocessing, ``Embedder`` (onnxruntime / TensorRT), ``Gallery`` (usearch).

Imports here must never pull in torch, torchvision, open_clip or geoopt. Names resolve lazily, so
``import tki_sdk.runtime`` costs nothing until ``Embedder`` (onnxruntime) or ``Gallery`` (usearch) is used::

    from tki_sdk.runtime import Embedder, Gallery, gallery_from_folder
    emb = Embedder("export_dir")
    gallery, report = gallery_from_folder("images/", emb)
    keys, dist = gallery.search(emb.embed_images(["query.jpg"]).embeddings, k=10,
                                model_fingerprint=emb.model_fingerprint)
"""
from __future__ import annotations

import importlib
from typing import Any

from tki_sdk.common.model_metadata import INPUT_NAME, METADATA_FILE, OUTPUT_NAME, ModelMetadata, PreprocessConfig

_LAZY = {
    "Preprocessor": "engine.preprocess",
    "Embedder": "engine.embedder",
    "EmbedResult": "engine.embedder",
    "available_backends": "engine.embedder",
    "Gallery": "index.gallery",
    "ModelMismatchError": "index.gallery",
    "MISSING_KEY": "index.gallery",
    "scan_image_folder": "pipeline.ingest",
    "gallery_from_folder": "pipeline.ingest",
    "TensorRTRunner": "engine.tensorrt_runner",
    "load_image": "engine.images",
    "ImageLoadError": "engine.images",
}

__all__ = [
    "ModelMetadata",
    "PreprocessConfig",
    "METADATA_FILE",
    "INPUT_NAME",
    "OUTPUT_NAME",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
