"""Access control of the service: the API key (``Authorization: Bearer <key>``, compared in constant time)
and the allowed Host headers.

:class:`BearerKeyMiddleware`: with a key configured, every route needs it -- the ``/v1`` API, ``/metrics``,
``/docs``, ``/redoc``, ``/openapi.json`` and any path not listed -- except :data:`OPEN_PATHS` (liveness,
readiness) and the page (``/`` and ``/static/...``, which hold no data; the page sends the key the user gives
it). Without a key every route is open (the service listens on loopback by default). A refusal is 401 with
``WWW-Authenticate: Bearer`` and one line of JSON. :func:`host_middleware` is Starlette's
``TrustedHostMiddleware`` answering a wrong Host with one line of JSON (400).
"""
from __future__ import annotations

import hmac
from http import HTTPStatus
from typing import Any, Awaitable, Callable, MutableMapping, Sequence

from starlette.middleware.trustedhost import TrustedHostMiddleware

from tki_sdk.serve.errors import send_error

__all__ = ["BearerKeyMiddleware", "JSONTrustedHostMiddleware", "OPEN_PATHS", "PAGE_PATHS"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Routes answered without the key: a load balancer's liveness and readiness checks.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
#: The page and its files (no data in them).
PAGE_PATHS = ("/", "/favicon.ico")
_STATIC_PREFIX = "/static/"
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="tki"'}


def _is_open(path: str) -> bool:
    return path in OPEN_PATHS or path in PAGE_PATHS or path.startswith(_STATIC_PREFIX)


class BearerKeyMiddleware:
    """401 unless the request carries ``Bearer <api_key>`` (see the module docstring for the open routes)."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = api_key.encode("ascii")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _is_open(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        header = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                header = value
                break
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            await send_error(send, HTTPStatus.UNAUTHORIZED, "this service needs an API key: send the header "
                             "'Authorization: Bearer <key>'", _CHALLENGE)
            return
        if not hmac.compare_digest(token.strip(), self.expected):
            await send_error(send, HTTPStatus.UNAUTHORIZED, "the API key is not valid", _CHALLENGE)
            return
        await self.app(scope, receive, send)


class JSONTrustedHostMiddleware:
    """Starlette's ``TrustedHostMiddleware`` decides; a refused Host gets one line of JSON (400) instead of
    Starlette's plain text. The check runs on a probe app that only marks the scope as passed."""

    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str]) -> None:
        self.app = app
        self._checker = TrustedHostMiddleware(_mark_passed, allowed_hosts=list(allowed_hosts), www_redirect=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        await self._checker(scope, receive, _discard)
        if scope.pop(_PASSED, False):
            await self.app(scope, receive, send)
            return
        await send_error(send, HTTPStatus.BAD_REQUEST, "this Host header is not served here (--allowed-host)")


_PASSED = "tki.host_allowed"


async def _mark_passed(scope: Scope, receive: Receive, send: Send) -> None:
    scope[_PASSED] = True


async def _discard(message: MutableMapping[str, Any]) -> None:
    return None
