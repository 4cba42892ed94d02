"""``APIError``: a client-facing failure with its HTTP status and one line of JSON (``{"error": "..."}``)."""
from __future__ import annotations

import json
from typing import Any, Awaitable, Callable, MutableMapping

from tki_sdk.common.errors import one_line as _one_line

__all__ = ["APIError", "error_body", "send_error"]


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


async def send_error(send: Callable[[MutableMapping[str, Any]], Awaitable[None]], status: int, message: str,
                     headers: dict[str, str] | None = None) -> None:
    """Answer ``status`` with ``{"error": message}`` straight on the ASGI ``send`` (for middleware that
    refuses before the app runs); the connection is closed after it."""
    data = json.dumps(error_body(message)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
           (b"connection", b"close")]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": int(status), "headers": raw})
    await send({"type": "http.response.body", "body": data})
