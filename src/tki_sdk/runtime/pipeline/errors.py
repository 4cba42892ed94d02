"""The pipeline's own errors: one line each, with the exit status a console script should end with.

Every error the embedding job raises for a condition the user must fix is a :class:`PipelineError`
(``code`` from :mod:`tki_sdk.common.errors`). :class:`ConfigError` names the
:class:`~tki_sdk.runtime.pipeline.config.EmbedConfig` field at fault (``field``) and states the problem
without it (``problem``), so a front door can say it in its own words (the CLI names the flag).
"""
from __future__ import annotations

from pathlib import Path

from tki_sdk.common.errors import EXIT_DAMAGED, EXIT_FAILED, EXIT_USAGE

__all__ = ["PipelineError", "ConfigError", "GalleryBusyError", "GalleryChangedError", "ShardDamagedError",
           "NothingEmbeddedError"]


class PipelineError(Exception):
    """A condition the user must fix (``code`` 2), or a run that failed (``code`` 1); one line."""

    code: int = EXIT_USAGE

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = int(code)


class ConfigError(PipelineError, ValueError):
    """A field of the job's configuration is out of bounds or contradicts another: ``"<field> <problem>"``."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field
        self.problem = problem


class GalleryBusyError(PipelineError):
    """Another run holds the gallery's writer lock and the job was told not to wait."""


class GalleryChangedError(PipelineError):
    """Compare-and-swap refused the save: the gallery's live version is no longer the one the run started
    from (a writer that did not take the writer lock saved meanwhile); nothing was replaced."""

    code = EXIT_FAILED


class ShardDamagedError(PipelineError):
    """A shard failed its checks (Parquet page checksum, the SHA-256 the run recorded, an unreadable page, a
    vector that cannot be indexed, a width other than the gallery's); ``path`` names it."""

    code = EXIT_DAMAGED

    def __init__(self, path: Path, what: str, code: int | None = None) -> None:
        super().__init__(f"shard {path} {what}", code)
        self.path = Path(path)


class NothingEmbeddedError(PipelineError):
    """No listed file could be embedded (nothing was written)."""

    code = EXIT_FAILED
