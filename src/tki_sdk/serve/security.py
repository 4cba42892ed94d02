"""API-key check for the ``/v1`` routes: ``Authorization: Bearer <key>``, compared in constant time.

Without a configured key every route is open (the service listens on loopback by default). The health
routes (``/healthz``, ``/readyz``, ``/metrics``) and the page's static files never need the key.
"""
from __future__ import annotations

import hmac
from typing import Callable

from fastapi import Request

from tki_sdk.serve.errors import APIError

__all__ = ["bearer_key_checker"]

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="tki"'}


def bearer_key_checker(api_key: str | None) -> Callable[[Request], None]:
    """A FastAPI dependency that raises 401 unless the request carries ``Bearer <api_key>``."""
    expected = api_key.encode() if api_key else None

    def check(request: Request) -> None:
        if expected is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise APIError(401, "this service needs an API key: send the header 'Authorization: Bearer <key>'",
                           _CHALLENGE)
        if not hmac.compare_digest(token.strip().encode(), expected):
            raise APIError(401, "the API key is not valid", _CHALLENGE)

    return check
