"""HTTP routes: the ``/v1`` API, the health routes and the web page.

==========================================  ======================================================================
route                                       what it does
==========================================  ======================================================================
``POST /v1/search``                         multipart: image file parts + form fields ``k``, ``where`` (JSON);
                                            JSON: ``{"vectors": [[...]], "k": 10, "where": {...}}``.
                                            Returns ``results[i] = {keys, distances, metadata}`` per query.
``POST /v1/embed``                          multipart image file parts -> ``embeddings`` [n][D]
``GET /v1/items/{key}``                     metadata of one gallery item
``GET /v1/items/{key}/thumbnail``           JPEG of that item's file, long side <= ``--thumbnail-px``
``GET /v1/info``                            model summary (``tki.json``), gallery size, dtype, metric, version,
                                            domain and class counts, limits
``GET /healthz`` ``/readyz`` ``/metrics``   liveness, readiness (503 while starting or draining), Prometheus
``GET /``                                   the search page (``static/``)
==========================================  ======================================================================
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Path as PathParam, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from tki_sdk.runtime import ImageLoadError

from tki_sdk.serve.errors import APIError
from tki_sdk.serve.inputs import parse_k, parse_vectors, parse_where
from tki_sdk.serve.metrics import CONTENT_TYPE_LATEST
from tki_sdk.serve.security import bearer_key_checker
from tki_sdk.serve.service import Query, SearchService, public_metadata

__all__ = ["build_routers", "STATIC_DIR"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
KEY_MAX = 2**64 - 2

_IMAGES_BODY = {
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "image": {"type": "array", "items": {"type": "string", "format": "binary"},
                  "description": "one or more image files (any field name; every file part is a query)"},
        "k": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 10},
        "where": {"type": "string", "description": 'JSON filter, e.g. {"domain": "sketch"}'},
    }}},
}
_SEARCH_BODY = {"requestBody": {"required": True, "content": {
    **_IMAGES_BODY,
    "application/json": {"schema": {"type": "object", "required": ["vectors"], "properties": {
        "vectors": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
        "k": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 10},
        "where": {"type": "object", "additionalProperties": True},
    }}},
}}}
_EMBED_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "properties": {"image": _IMAGES_BODY["multipart/form-data"]["schema"]["properties"]["image"]},
}}}}}


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _read_form(request: Request, service: SearchService) -> tuple[list[tuple[str, bytes]], dict[str, str]]:
    """File parts (name, bytes) and text fields of a multipart body."""
    cfg = service.config
    try:
        form = await request.form(max_files=cfg.max_images, max_fields=16, max_part_size=cfg.max_body_bytes)
    except StarletteHTTPException as e:
        status = 413 if "Too many files" in str(e.detail) else 400
        raise APIError(status, f"multipart body refused: {e.detail}") from None
    images: list[tuple[str, bytes]] = []
    fields: dict[str, str] = {}
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                data = await value.read()
                label = value.filename or f"part {len(images)}"
                if not data:
                    raise APIError(400, f"{label}: empty file")
                images.append((label, data))
            else:
                fields[name] = value
    finally:
        await form.close()
    return images, fields


def build_routers(service: SearchService) -> list[APIRouter]:
    cfg = service.config
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(bearer_key_checker(cfg.api_key))], tags=["search"])
    ops = APIRouter(tags=["operations"])
    dim = service.embedder.embedding_dim

    async def _images_query(request: Request, *, search: bool) -> tuple[Query, dict[str, Any]]:
        images, fields = await _read_form(request, service)
        if not images:
            raise APIError(422, "no image in the request; send image files as multipart file parts")
        query = Query(pixels=await service.decode(images))
        extra: dict[str, Any] = {}
        if search:
            query.k = parse_k(fields.get("k"), cfg.max_k)
            query.where = parse_where(fields.get("where"))
        return query, extra

    @v1.post("/search", summary="nearest gallery items of query images or vectors", openapi_extra=_SEARCH_BODY)
    async def search(request: Request) -> JSONResponse:
        t0 = time.perf_counter()
        async with service.admit():
            ctype = _content_type(request)
            if ctype == "multipart/form-data":
                query, _ = await _images_query(request, search=True)
            elif ctype == "application/json":
                try:
                    body = await request.json()
                except ValueError as e:
                    raise APIError(400, f"the body is not valid JSON ({e})") from None
                if not isinstance(body, dict):
                    raise APIError(422, 'the JSON body must be an object like {"vectors": [[...]], "k": 10}')
                unknown = set(body) - {"vectors", "k", "where"}
                if unknown:
                    raise APIError(422, f"unknown field(s) {sorted(unknown)}; use vectors, k and where")
                metric = service.live.snapshot.gallery.metric
                query = Query(vectors=parse_vectors(body.get("vectors"), dim, cfg.max_images, nonzero=metric == "cos"),
                              k=parse_k(body.get("k"), cfg.max_k), where=parse_where(body.get("where")))
            else:
                raise APIError(415, "send multipart/form-data (image files) or application/json (vectors)")
            out = await service.run(query)
        return JSONResponse({"results": out["results"], "k": query.k, "where": query.where,
                             "gallery_version": out["version"], "batch_queries": out["batch"],
                             "took_ms": round((time.perf_counter() - t0) * 1000, 3)})

    @v1.post("/embed", summary="embeddings of images", openapi_extra=_EMBED_BODY)
    async def embed(request: Request) -> JSONResponse:
        t0 = time.perf_counter()
        async with service.admit():
            if _content_type(request) != "multipart/form-data":
                raise APIError(415, "send images as multipart/form-data file parts")
            query, _ = await _images_query(request, search=False)
            out = await service.run(query)
        vecs = out["vectors"]
        return JSONResponse({"embeddings": vecs.tolist(), "dim": int(vecs.shape[1]),
                             "model_fingerprint": service.embedder.model_fingerprint,
                             "batch_queries": out["batch"], "took_ms": round((time.perf_counter() - t0) * 1000, 3)})

    def _item(key: int) -> tuple[Any, dict[str, Any]]:
        snap = service.live.snapshot
        meta = snap.gallery.get_metadata(key)[0] if snap.gallery.contains(key) else None
        if meta is None:
            raise APIError(404, f"no item {key} in the gallery (version {snap.version or 'unversioned'})")
        return snap, meta

    @v1.get("/items/{key}", summary="metadata of one gallery item")
    async def item(key: int = PathParam(ge=0, le=KEY_MAX)) -> dict[str, Any]:
        snap, meta = _item(key)
        return {"key": key, "metadata": public_metadata(meta), "gallery_version": snap.version}

    @v1.get("/items/{key}/thumbnail", summary="bounded-size JPEG of one gallery item",
            response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
    async def thumbnail(key: int = PathParam(ge=0, le=KEY_MAX)) -> Response:
        snap, meta = _item(key)
        path = meta.get("path")
        if not isinstance(path, str) or not path:
            raise APIError(404, f"item {key} names no image file")
        async with service.admit():
            loop = asyncio.get_running_loop()
            try:
                data = await loop.run_in_executor(service.decode_pool, service.thumbnails.get, snap.version, key,
                                                  Path(path))
            except ImageLoadError as e:
                raise APIError(404, f"the image of item {key} cannot be read ({e.reason})") from None
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"})

    @v1.get("/info", summary="model, gallery and limits")
    async def info() -> dict[str, Any]:
        snap = service.live.snapshot
        g, md, emb = snap.gallery, service.embedder.metadata, service.embedder
        return {
            "model": {"name": md.model_name, "head": md.head, "output_space": md.output_space,
                      "embedding_dim": md.embedding_dim, "metric": md.metric, "precision": emb.precision,
                      "provider": getattr(emb, "provider", None), "fingerprint": emb.model_fingerprint,
                      "weights": md.weights, "preprocess": md.preprocess.to_dict()},
            "gallery": {"items": snap.size, "ndim": g.ndim, "dtype": g.dtype, "metric": g.metric,
                        "exact": g.exact, "version": snap.version, "loaded_at": snap.loaded_at,
                        "domains": snap.facets.get("domain", {}), "classes": snap.facets.get("class", {})},
            "limits": {"max_k": cfg.max_k, "max_batch": cfg.max_batch, "max_wait_ms": cfg.max_wait_ms,
                       "max_images": cfg.max_images, "max_body_bytes": cfg.max_body_bytes,
                       "max_pixels": cfg.max_pixels, "request_timeout_s": cfg.request_timeout_s},
            "auth": cfg.api_key is not None,
        }

    @ops.get("/healthz", summary="the process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @ops.get("/readyz", summary="ready to answer searches (503 while starting or draining)")
    async def readyz() -> JSONResponse:
        if not service.ready:
            return JSONResponse({"status": "not ready"}, status_code=503, headers={"Retry-After": "1"})
        return JSONResponse({"status": "ready", "gallery_version": service.live.snapshot.version})

    @ops.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        service.metrics.queue_depth(service.batcher.depth)
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @ops.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    return [v1, ops]
