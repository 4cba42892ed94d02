"""``APIError``: a client-facing failure with its HTTP status and one line of JSON (``{"error": "..."}``)."""
from __future__ import annotations

from tki_sdk.common.errors import one_line as _one_line

__all__ = ["APIError", "error_body"]


class APIError(Exception):
    """Raised anywhere in a request; the app answers ``status`` with ``{"error": message}``.

    ``message`` is one line that says what to change; ``headers`` are added to the response
    (``Retry-After`` on 503, ``WWW-Authenticate`` on 401).
    """

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = int(status)
        self.message = _clip(message)
        self.headers = dict(headers or {})


def _clip(message: str, limit: int = 300) -> str:
    """``message`` as one printable line (:func:`tki_sdk.common.errors.one_line`), at most ``limit`` characters."""
    text = _one_line(ValueError(str(message))) if str(message).strip() else "error"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error_body(message: str) -> dict[str, str]:
    return {"error": _clip(message)}
