"""``create_app(config)``: the FastAPI application of ``tki serve``.

Every error leaves as one line of JSON, ``{"error": "..."}``, with its status (4xx for anything the
request got wrong; never a traceback). Middleware, outermost first: request metrics, the Host check
(``allowed_hosts``), CORS, the API key (:mod:`.security`), the body limit. ``docs=False`` removes
``/docs``, ``/redoc`` and ``/openapi.json``. The service starts its threads in the app's lifespan and, on
shutdown (uvicorn's SIGTERM: stop accepting, finish open requests), answers everything still queued before
the process exits.
"""
from __future__ import annotations

import contextlib
import logging
from http import HTTPStatus
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from tki_sdk.serve.config import ServeConfig
from tki_sdk.serve.errors import APIError, error_body
from tki_sdk.serve.middleware import BodyLimitMiddleware, RequestMetricsMiddleware
from tki_sdk.serve.routes import STATIC_DIR, build_routers
from tki_sdk.serve.security import BearerKeyMiddleware, JSONTrustedHostMiddleware
from tki_sdk.serve.service import SearchService

log = logging.getLogger(__name__)

__all__ = ["create_app"]


def _validation_message(exc: RequestValidationError) -> str:
    errs = exc.errors()
    if not errs:
        return "invalid request"
    e = errs[0]
    loc = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body",))
    return f"{loc}: {e.get('msg', 'invalid')}" if loc else str(e.get("msg", "invalid request"))


def create_app(config: ServeConfig, service: SearchService | None = None) -> FastAPI:
    """The app for ``config``; ``service`` (already built) is used as is, else one is built here."""
    svc = service if service is not None else SearchService(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc.start()
        try:
            yield
        finally:
            svc.stop()

    app = FastAPI(
        title="tki serve",
        summary="Cross-domain image search over an exported TKI model and a tki gallery.",
        version="1",
        lifespan=lifespan,
        docs_url="/docs" if config.docs else None,
        redoc_url="/redoc" if config.docs else None,
        openapi_url="/openapi.json" if config.docs else None,
    )
    app.state.service = svc

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(error_body(exc.message), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(_validation_message(exc)), status_code=HTTPStatus.UNPROCESSABLE_ENTITY)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(exc.detail)), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body(f"internal error ({type(exc).__name__}); the service keeps running"),
                            status_code=HTTPStatus.INTERNAL_SERVER_ERROR)

    for router in build_routers(svc):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # add_middleware wraps: the last added runs first
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=config.max_body_bytes)
    if config.api_key is not None:
        app.add_middleware(BearerKeyMiddleware, api_key=config.api_key)
    if config.cors_origins:  # outside the key check: a browser's preflight carries no key
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    if config.allowed_hosts:
        app.add_middleware(JSONTrustedHostMiddleware, allowed_hosts=config.allowed_hosts)
    app.add_middleware(RequestMetricsMiddleware, metrics=svc.metrics)
    return app


def describe(config: ServeConfig, service: SearchService) -> str:
    """One paragraph for the log when the service starts."""
    snap = service.live.snapshot
    emb = service.embedder
    return (f"tki serve: {emb.metadata.model_name} {emb.precision} on {getattr(emb, 'provider', '?')}; gallery "
            f"{config.gallery} version {snap.version or '-'} ({snap.size:,} items); batches up to "
            f"{config.max_batch}, wait <= {config.max_wait_ms:g} ms; text search "
            f"{'by ' + repr(service.text.default_query) if service.text else 'off (export without text)'}; "
            f"http://{config.host}:{config.port}/")
