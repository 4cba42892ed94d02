"""ASGI middleware of the service: request metrics, and the request-body size limit.

``BodyLimitMiddleware``: a declared ``Content-Length`` over the limit is answered 413 before any byte of the
body is read; a body streamed without one (chunked) is counted while the app reads it and the read fails
with 413 as soon as the count passes the limit. ``RequestMetricsMiddleware`` counts every response by
route template, method and status and observes its latency (see :mod:`tki_sdk.serve.metrics`).
"""
from __future__ import annotations

import time
from http import HTTPStatus
from typing import Any, Awaitable, Callable, MutableMapping

from tki_sdk.serve.errors import APIError, send_error
from tki_sdk.serve.metrics import ServiceMetrics

__all__ = ["BodyLimitMiddleware", "RequestMetricsMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = int(max_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await send_error(send, HTTPStatus.BAD_REQUEST, "Content-Length is not a number")
                    return
                if declared > limit:
                    await send_error(send, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, (
                        f"request body of {declared:,} bytes is over the limit of {limit:,} (--max-body-mb)"))
                    return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise APIError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request body is over the limit of {limit:,} bytes (--max-body-mb)")
            return message

        await self.app(scope, counted, send)


class RequestMetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = [int(HTTPStatus.INTERNAL_SERVER_ERROR)]  # when the app fails before it answers

        async def watched(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(route=path, method=scope.get("method", ""), status=str(status[0])).inc()
            self.metrics.latency.labels(route=path).observe(time.perf_counter() - t0)
