"""The pipeline's own errors: one line each, with the exit status a console script should end with.

Every error the embedding job raises for a condition the user must fix is a :class:`PipelineError`
(``code`` from :mod:`tki_sdk.common.errors`). A message names configuration fields as ``{field}`` tokens
(``"... rebuild it ({overwrite})"``): ``str(e)`` shows the field names, :meth:`PipelineError.render` whatever
a front door calls them (the CLI: its flags). A field of
:class:`~tki_sdk.runtime.pipeline.config.EmbedConfig` out of bounds is the project's one
:class:`~tki_sdk.common.errors.ConfigError`; a missing Ray or pyarrow the one
:class:`~tki_sdk.common.extras.MissingExtraError`.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from tki_sdk.common.errors import EXIT_DAMAGED, EXIT_FAILED, EXIT_USAGE, render_fields

__all__ = ["PipelineError", "GalleryBusyError", "GalleryChangedError", "ShardDamagedError",
           "NothingEmbeddedError"]


class PipelineError(Exception):
    """A condition the user must fix (``code`` 2), or a run that failed (``code`` 1); one line."""

    code: int = EXIT_USAGE

    def __init__(self, message: str, code: int | None = None, fields: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.template = message
        self.fields = tuple(fields)
        if code is not None:
            self.code = int(code)

    def render(self, names: Mapping[str, str] | None = None) -> str:
        """The message with each ``{field}`` token of :attr:`fields` replaced by ``names[field]`` (default:
        the field name); other text, braces included, is left as it is."""
        return render_fields(self.template, self.fields, names)

    def __str__(self) -> str:
        return self.render()


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
