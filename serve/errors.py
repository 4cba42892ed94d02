"""``APIError``: a client-facing failure with its HTTP status and one line of JSON (``{"error": "..."}``)."""
from __future__ import annotations

__all__ = ["APIError", "error_body"]


class APIError(Exception):
    """Raised anywhere in a request; the app answers ``status`` with ``{"error": message}``.

    ``message`` is one line that says what to change; ``headers`` are added to the response
    (``Retry-After`` on 503, ``WWW-Authenticate`` on 401).
    """

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = int(status)
        self.message = one_line(message)
        self.headers = dict(headers or {})


def one_line(message: str, limit: int = 300) -> str:
    """First line of ``message``, at most ``limit`` characters."""
    text = str(message).strip().splitlines()[0] if str(message).strip() else "error"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error_body(message: str) -> dict[str, str]:
    return {"error": one_line(message)}
