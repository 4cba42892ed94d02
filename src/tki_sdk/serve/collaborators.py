"""What the service needs of its collaborators, as Protocols: an embedder (the runtime's ``Embedder`` or a
test double), a served gallery version (the runtime's ``Gallery``) and a micro-batcher
(:class:`~tki_sdk.serve.batching.MicroBatcher`). Nothing here is
implemented; the types only say which attributes and methods the service calls."""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Protocol, Sequence

import numpy as np

from tki_sdk.common.model_metadata import ModelMetadata

__all__ = ["Preprocess", "TextEncoderLike", "EmbedderLike", "GalleryLike", "BatcherLike"]


class Preprocess(Protocol):
    def process(self, item: Any) -> np.ndarray:
        """Encoded image bytes -> preprocessed pixels [3, H, W] (``ImageLoadError`` when unreadable)."""
        ...


class TextEncoderLike(Protocol):
    default_query: str
    domain_vectors: np.ndarray | None
    context_length: int


class EmbedderLike(Protocol):
    metadata: ModelMetadata
    preprocessor: Preprocess
    precision: str
    provider: str
    model_fingerprint: str
    embedding_dim: int

    @property
    def has_text(self) -> bool:
        """True when the export carries a text artifact."""
        ...

    @property
    def text_encoder(self) -> TextEncoderLike:
        """The text artifact, its files checked (only called when ``has_text``)."""
        ...

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Preprocessed pixels [n, 3, H, W] -> embeddings [n, D] float32."""
        ...

    def embed_texts(self, texts: list[str], template: str | None = None, batch_size: int = 64) -> np.ndarray:
        """Texts -> embeddings [n, D] float32 in the images' space (``template``: raw, a string with ``{}`` or
        ensemble; None: the export's default); ``ValueError`` for a construction the export cannot make."""
        ...


class GalleryLike(Protocol):
    ndim: int
    metric: str
    dtype: str
    exact: bool

    def __len__(self) -> int: ...

    def keys(self) -> np.ndarray: ...

    def contains(self, keys: int | Iterable[int]) -> bool | np.ndarray: ...

    def get_metadata(self, keys: int | Sequence[int] | np.ndarray) -> list[dict[str, Any] | None]: ...

    def check_model(self, model_fingerprint: str | None) -> None: ...

    def search(self, vectors: np.ndarray, k: int, where: Mapping[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Keys [n, k] (``MISSING_KEY`` where fewer match) and distances [n, k] of the nearest items."""
        ...


class BatcherLike(Protocol):
    @property
    def alive(self) -> bool: ...

    @property
    def depth(self) -> int: ...

    def start(self) -> None: ...

    def stop(self, timeout: float | None = 30.0) -> None: ...

    def submit(self, payload: Any, size: int) -> Any:
        """Queue ``size`` queries; returns a job with an ``asyncio.Future`` ``future`` and a writable
        ``abandoned`` flag; raises ``QueueFull`` when full."""
        ...
