"""Optional parts: the one error for "this needs an extra that is not installed" (exit status 3).

The import itself stays a literal statement at its place of use, so the import rules can see it::

    try:
        import ray
    except ImportError as e:
        raise missing_extra("--engine ray needs Ray Data", "distributed") from e

The console scripts turn :class:`MissingExtraError` into one line and exit status
:data:`~tki_sdk.common.errors.EXIT_MISSING` (``tki_sdk.cli.base.run_main``).
"""
from __future__ import annotations

__all__ = ["MissingExtraError", "missing_extra"]


class MissingExtraError(ImportError):
    """An optional part is not installed; ``extra`` names the tki-sdk extra that brings it."""

    def __init__(self, message: str, extra: str) -> None:
        super().__init__(message)
        self.extra = extra


def missing_extra(what: str, extra: str) -> MissingExtraError:
    """``"<what>; pip install 'tki-sdk[<extra>]'"`` as a :class:`MissingExtraError` (raise it ``from`` the
    ``ImportError``)."""
    return MissingExtraError(f"{what}; pip install 'tki-sdk[{extra}]'", extra)
