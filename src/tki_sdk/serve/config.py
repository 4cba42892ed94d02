"""``ServeConfig``: every setting of ``tki serve``, as one typed value (the CLI fills it, tests build it)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ServeConfig", "DEFAULT_MAX_PIXELS"]

#: Largest image (declared width x height) the service decodes; larger uploads get 413 before decoding.
DEFAULT_MAX_PIXELS = 40_000_000


@dataclass
class ServeConfig:
    """Settings of one service instance.

    Batching: concurrent queries are coalesced into one inference call of at most ``max_batch`` images or
    vectors; the inference thread waits at most ``max_wait_ms`` after the first query of a batch for more,
    and stops waiting early when no admitted request is still on its way (decoding) unless ``fixed_wait``.
    Admission: at most ``max_queue`` requests may wait for decoding or inference; one more gets 503 with
    ``Retry-After``. Each admitted request gets an answer within ``request_timeout_s`` (else 504).
    Limits: request bodies over ``max_body_bytes`` get 413; at most ``max_images`` images or vectors per
    request; images declaring more than ``max_pixels`` pixels are refused before decoding.
    Live updates: ``CURRENT`` of the gallery folder is read every ``reload_interval_s`` seconds (0: never).
    """

    model: Path
    gallery: Path
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_batch: int = 32
    max_wait_ms: float = 5.0
    fixed_wait: bool = False
    workers: int = 2
    threads: int | None = None
    precision: str | None = None
    max_queue: int = 256
    request_timeout_s: float = 30.0
    max_body_bytes: int = 16 * 2**20
    max_images: int = 64
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_k: int = 1000
    reload_interval_s: float = 2.0
    thumbnail_px: int = 256
    thumbnail_cache: int = 512
    cors_origins: list[str] = field(default_factory=list)
    log_level: str = "info"

    def __post_init__(self) -> None:
        self.model = Path(self.model)
        self.gallery = Path(self.gallery)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` (one line naming the option) for a setting outside its range."""
        checks = [
            ("--port", 0 <= self.port <= 65535, "must be 0..65535"),
            ("--max-batch", self.max_batch >= 1, "must be >= 1"),
            ("--max-wait-ms", math.isfinite(self.max_wait_ms) and self.max_wait_ms >= 0, "must be >= 0"),
            ("--workers", self.workers >= 1, "must be >= 1"),
            ("--threads", self.threads is None or self.threads >= 1, "must be >= 1"),
            ("--max-queue", self.max_queue >= 1, "must be >= 1"),
            ("--timeout", self.request_timeout_s > 0, "must be > 0"),
            ("--max-body-mb", self.max_body_bytes >= 1024, "must be at least 1 KiB"),
            ("--max-images", self.max_images >= 1, "must be >= 1"),
            ("--max-pixels", self.max_pixels >= 1, "must be >= 1"),
            ("--reload-interval", self.reload_interval_s >= 0, "must be >= 0 (0 disables reloading)"),
            ("--thumbnail-px", 16 <= self.thumbnail_px <= 2048, "must be 16..2048"),
        ]
        for flag, ok, why in checks:
            if not ok:
                raise ValueError(f"{flag} {why}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("--api-key is empty; give a non-empty key or leave it out")
