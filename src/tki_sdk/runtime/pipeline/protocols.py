"""What the pipeline needs of its collaborators: an embedder and a gallery (structural types).

:class:`~tki_sdk.runtime.engine.embedder.Embedder` and :class:`~tki_sdk.runtime.index.gallery.Gallery`
satisfy them; tests and applications may pass anything else that does.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tki_sdk.common.model_metadata import ModelMetadata

__all__ = ["EmbedResultLike", "EmbedderLike", "GalleryLike"]


class EmbedResultLike(Protocol):
    """``embeddings[i]`` is the vector of input ``indices[i]``; ``errors`` are ``(input, reason)`` pairs."""

    embeddings: np.ndarray
    indices: np.ndarray
    errors: list[tuple[Any, str]]


class EmbedderLike(Protocol):
    """Embeds image files: what the local engine, the shard metadata and a new gallery need."""

    model_fingerprint: str
    embedding_dim: int
    metadata: ModelMetadata  #: the export's tki.json (metric, model summary for the gallery)

    def embed_images(self, items: Sequence[str | os.PathLike[str]], *, batch_size: int = ...,
                     workers: int | None = ..., progress: Any = ...) -> EmbedResultLike: ...


class GalleryLike(Protocol):
    """A keyed vector index with metadata: what planning, committing and saving a run need."""

    model_fingerprint: str | None
    ndim: int
    metric: str
    exact: bool
    dtype: str
    connectivity: int
    expansion_add: int

    def __len__(self) -> int: ...

    def keys(self) -> np.ndarray: ...

    def get_metadata(self, keys: Any) -> list[dict[str, Any] | None]: ...

    def add(self, keys: Any, vectors: np.ndarray,
            metadata: Sequence[Mapping[str, Any] | None] | None = None) -> np.ndarray: ...

    def remove(self, keys: Any) -> int: ...

    def tune(self, target_recall: float = ..., queries: np.ndarray | None = ..., **options: Any) -> Any: ...

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = ..., expect: str | None = ...) -> Path: ...
