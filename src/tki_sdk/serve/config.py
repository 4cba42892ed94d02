"""``ServeConfig``: every setting of ``tki serve`` as one typed value, the one place that owns its defaults,
bounds and validation.

Each field carries its command-line form in its ``metadata`` (:class:`Option`: flag, help, unit), so
``tki serve``'s options and the defaults its ``--help`` shows are built from this class and restate nothing.
A setting outside its range raises :class:`~tki_sdk.common.errors.ConfigError`, which names the field; the CLI maps the field
to its flag.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from tki_sdk.common.errors import ConfigError
from tki_sdk.runtime.engine.text_encoder import MAX_TEXT_CHARS

__all__ = ["ServeConfig", "Option", "option_of", "DEFAULT_MAX_PIXELS", "api_key_problem"]

#: Largest image (declared width x height) the service decodes; larger uploads get 413 before decoding.
DEFAULT_MAX_PIXELS = 40_000_000


@dataclass(frozen=True)
class Option:
    """The command-line form of one field: ``flag``, ``help`` (``%(default)s`` is the field's default shown in
    the flag's unit), ``metavar``, ``scale`` (field value = flag value x scale), ``kind`` (``value``,
    ``flag`` for a switch that sets True, ``off`` for a switch that sets False, ``append`` for a repeatable
    option), ``choices``."""

    flag: str
    help: str
    metavar: str | None = None
    scale: float | None = None
    kind: str = "value"
    choices: tuple[str, ...] | None = None


def _opt(default: Any, flag: str, help: str, **kw: Any) -> Any:
    meta = {"option": Option(flag, help, **kw)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    if default is MISSING:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


def option_of(name: str) -> Option:
    """The :class:`Option` of the field ``name``."""
    for f in fields(ServeConfig):
        if f.name == name:
            return f.metadata["option"]
    raise KeyError(name)


def api_key_problem(key: str) -> str | None:
    """Why ``key`` cannot be an API key, or None. A key is one or more visible ASCII characters (``!`` to
    ``~``): an empty or blank key would turn authentication off or never match, surrounding whitespace is
    lost by HTTP clients, and non-ASCII or control characters cannot travel in a header as they are. The
    reason never quotes the key."""
    if key == "":
        return "is empty; give a key or leave it unset"
    if not key.strip():
        return "is blank; give a key of visible ASCII characters"
    if key != key.strip():
        return "has leading or trailing whitespace, which HTTP clients drop; remove it"
    if not key.isascii():
        return "holds non-ASCII characters, which cannot be sent in an Authorization header; use ASCII"
    if not all(33 <= ord(c) <= 126 for c in key):
        return "holds spaces or control characters; use visible ASCII characters only"
    return None


@dataclass
class ServeConfig:
    """Settings of one service instance.

    Batching: concurrent queries are coalesced into one inference call of at most ``max_batch`` images or
    vectors; the inference thread waits at most ``max_wait_ms`` after the first query of a batch for more,
    and stops waiting early when no admitted request is still on its way (decoding) unless ``fixed_wait``.
    Admission: at most ``max_queue`` requests may wait for decoding or inference; one more gets 503 with
    ``Retry-After``. Each admitted request, decoding included, gets an answer within ``request_timeout_s``
    (else 504, and its remaining decoding is cancelled).
    Limits: request bodies over ``max_body_bytes`` get 413; at most ``max_images`` images or vectors per
    request; images declaring more than ``max_pixels`` pixels, or requests whose images declare more than
    ``max_request_pixels`` together, are refused before decoding; at most ``max_texts`` text queries per
    request, each of 1..``max_text_chars`` characters (at most the runtime's ``MAX_TEXT_CHARS``).
    Connections: at most ``max_connections`` open (a new one closes the oldest idle one; never more than the
    process's file limit allows), a listen ``backlog``, idle connections closed after ``keep_alive_s``.
    Access: ``api_key`` guards everything but ``/healthz``, ``/readyz`` and the page; ``docs`` False removes
    ``/docs``, ``/redoc`` and ``/openapi.json``; ``allowed_hosts`` (when given) refuses other Host headers.
    Privacy: file paths (``path``) are neither shown nor filterable unless ``expose_paths``; thumbnails are
    read only from regular files inside ``image_root`` (default: each item's own images folder).
    Live updates: ``CURRENT`` of the gallery folder is read every ``reload_interval_s`` seconds (0: never).
    """

    model: Path = _opt(MISSING, "--model", "export folder written by tki-export (tki.json)", metavar="DIR")
    gallery: Path = _opt(MISSING, "--gallery", "gallery folder written by tki embed", metavar="G")
    host: str = _opt("127.0.0.1", "--host", "address to listen on (default %(default)s: this machine only)")
    port: int = _opt(8000, "--port", "TCP port (default %(default)s; 0 picks a free one)")
    api_key: str | None = _opt(None, "--api-key", "require 'Authorization: Bearer KEY' on every route but "
                               "/healthz, /readyz and the page (default: $TKI_API_KEY when set)", metavar="KEY")
    allowed_hosts: list[str] = _opt([], "--allowed-host", "answer only requests whose Host header is this "
                                    "(repeatable, '*.example.com' allowed; default: any)", metavar="HOST",
                                    kind="append")
    docs: bool = _opt(True, "--no-docs", "switch off /docs, /redoc and /openapi.json", kind="off")
    expose_paths: bool = _opt(False, "--expose-paths", "show the items' file paths in answers and allow "
                              "filtering on them (default: hidden)", kind="flag")
    max_batch: int = _opt(32, "--max-batch", "most queries per inference batch (default %(default)s; 1 turns "
                          "batching off)", metavar="N")
    max_wait_ms: float = _opt(5.0, "--max-wait-ms", "longest wait for more queries after the first of a batch "
                              "(default %(default)s)", metavar="MS")
    fixed_wait: bool = _opt(False, "--fixed-wait", "always wait the full --max-wait-ms for a fuller batch "
                            "(default: stop waiting as soon as no other request is being decoded)", kind="flag")
    workers: int = _opt(2, "--workers", "image decode threads (default %(default)s)", metavar="N")
    threads: int | None = _opt(None, "--threads", "onnxruntime threads of the inference call (default: all "
                               "cores)", metavar="N")
    precision: str | None = _opt(None, "--precision", "model artifact, e.g. int8, fp32 (default: the export's)",
                                 metavar="P")
    max_queue: int = _opt(256, "--max-queue", "requests allowed in flight; one more gets 503 + Retry-After "
                          "(default %(default)s)", metavar="N")
    request_timeout_s: float = _opt(30.0, "--timeout", "answer, decoding included, or 504 within S seconds "
                                    "(default %(default)s)", metavar="S")
    max_body_bytes: int = _opt(16 * 2**20, "--max-body-mb", "request body limit, 413 above (default "
                               "%(default)s)", metavar="MB", scale=2**20)
    max_images: int = _opt(64, "--max-images", "images or vectors per request (default %(default)s)", metavar="N")
    max_texts: int = _opt(64, "--max-texts", "text queries per request (default %(default)s)", metavar="N")
    max_text_chars: int = _opt(1000, "--max-text-chars", "longest text query in characters (default "
                               "%(default)s)", metavar="N")
    max_pixels: int = _opt(DEFAULT_MAX_PIXELS, "--max-pixels", "refuse images declaring more pixels (default "
                           "%(default)s)", metavar="N")
    max_request_pixels: int = _opt(160_000_000, "--max-request-pixels", "refuse requests whose images declare "
                                   "more pixels together (default %(default)s)", metavar="N")
    max_k: int = _opt(1000, "--max-k", "largest k a search may ask for (default %(default)s)", metavar="K")
    reload_interval_s: float = _opt(2.0, "--reload-interval", "check the gallery's CURRENT every S seconds "
                                    "(default %(default)s; 0: never reload)", metavar="S")
    thumbnail_px: int = _opt(256, "--thumbnail-px", "thumbnail long side (default %(default)s)", metavar="PX")
    thumbnail_cache: int = _opt(512, "--thumbnail-cache", "thumbnails kept in memory (default %(default)s)",
                                metavar="N")
    image_root: Path | None = _opt(None, "--image-root", "serve thumbnails only of files under this folder "
                                   "(default: each item's own images folder, from its path and rel, else the file's folder)",
                                   metavar="DIR")
    max_connections: int = _opt(1024, "--max-connections", "open connections at most; a new one closes the "
                                "oldest idle one (default %(default)s, lowered to fit the file limit)",
                                metavar="N")
    backlog: int = _opt(128, "--backlog", "listen backlog and most connections accepted at once (default "
                        "%(default)s)", metavar="N")
    keep_alive_s: float = _opt(5.0, "--keep-alive", "close a connection idle for S seconds, before or between "
                               "requests (default %(default)s)", metavar="S")
    cors_origins: list[str] = _opt([], "--cors-origin", "allow browser calls from this origin (repeatable; "
                                   "default: CORS off)", metavar="ORIGIN", kind="append")
    log_level: str = _opt("info", "--log-level", "log level (default %(default)s)",
                          choices=("critical", "error", "warning", "info", "debug"))

    def __post_init__(self) -> None:
        self.model = Path(self.model)
        self.gallery = Path(self.gallery)
        if self.image_root is not None:
            self.image_root = Path(self.image_root)
        self.allowed_hosts = list(self.allowed_hosts)
        self.cors_origins = list(self.cors_origins)
        self.validate()

    def validate(self) -> None:
        """Raise :class:`~tki_sdk.common.errors.ConfigError` (naming the field) for a setting outside its range."""
        finite: Callable[[float], bool] = math.isfinite
        checks = [
            ("port", 0 <= self.port <= 65535, "must be 0..65535"),
            ("max_batch", self.max_batch >= 1, "must be >= 1"),
            ("max_wait_ms", finite(self.max_wait_ms) and self.max_wait_ms >= 0, "must be >= 0"),
            ("workers", self.workers >= 1, "must be >= 1"),
            ("threads", self.threads is None or self.threads >= 1, "must be >= 1"),
            ("max_queue", self.max_queue >= 1, "must be >= 1"),
            ("request_timeout_s", finite(self.request_timeout_s) and self.request_timeout_s > 0, "must be > 0"),
            ("max_body_bytes", self.max_body_bytes >= 1024, "must be at least 1 KiB"),
            ("max_images", self.max_images >= 1, "must be >= 1"),
            ("max_texts", self.max_texts >= 1, "must be >= 1"),
            ("max_text_chars", 1 <= self.max_text_chars <= MAX_TEXT_CHARS, f"must be 1..{MAX_TEXT_CHARS}"),
            ("max_pixels", self.max_pixels >= 1, "must be >= 1"),
            ("max_request_pixels", self.max_request_pixels >= 1, "must be >= 1"),
            ("max_k", self.max_k >= 1, "must be >= 1"),
            ("reload_interval_s", finite(self.reload_interval_s) and self.reload_interval_s >= 0,
             "must be >= 0 (0 disables reloading)"),
            ("thumbnail_px", 16 <= self.thumbnail_px <= 2048, "must be 16..2048"),
            ("thumbnail_cache", self.thumbnail_cache >= 0, "must be >= 0"),
            ("max_connections", self.max_connections >= 16, "must be >= 16"),
            ("backlog", 1 <= self.backlog <= 65535, "must be 1..65535"),
            ("keep_alive_s", finite(self.keep_alive_s) and self.keep_alive_s > 0, "must be > 0"),
            ("log_level", self.log_level in option_of("log_level").choices, "must be one of "
             + ", ".join(option_of("log_level").choices)),
        ]
        for name, ok, why in checks:
            if not ok:
                raise ConfigError(name, why)
        if self.api_key is not None:
            problem = api_key_problem(self.api_key)
            if problem:
                raise ConfigError("api_key", problem)
        for host in self.allowed_hosts:
            if not host or not host.isascii() or any(c.isspace() for c in host):
                raise ConfigError("allowed_hosts", "entries must be host names like search.example.com")
