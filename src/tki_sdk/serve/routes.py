"""HTTP routes: the ``/v1`` API, the health routes and the web page.

==========================================  ======================================================================
route                                       what it does
==========================================  ======================================================================
``POST /v1/search``                         multipart (or url-encoded form): image file parts, or ``text`` fields
                                            (repeatable), + form fields ``k``, ``where`` (JSON), ``text_template``;
                                            JSON: ``{"vectors": [[...]] | "text": "..." | ["...", ...],
                                            "text_template": ..., "k": 10, "where": {...}}``.
                                            Returns ``results[i] = {keys, distances, metadata}`` per query.
``POST /v1/embed``                          multipart image file parts or ``text`` fields, or JSON ``{"text": ...}``
                                            -> ``embeddings`` [n][D]
``GET /v1/items/{key}``                     metadata of one gallery item
``GET /v1/items/{key}/thumbnail``           JPEG of that item's file, long side <= ``--thumbnail-px``
``GET /v1/info``                            model summary (``tki.json``), gallery size, dtype, metric, version,
                                            domain and class counts, ``filter_fields``, ``text`` (whether text
                                            queries work, the default construction), limits
``GET /healthz`` ``/readyz`` ``/metrics``   liveness, readiness (503 while starting or draining), Prometheus
``GET /``                                   the search page (``static/``)
==========================================  ======================================================================

One request holds one kind of query: images, texts or vectors. Texts are embedded by the export's text
artifact in the images' space (``text_template``: ``raw``, ``template``, ``ensemble`` or a string holding
``{}``; absent: the export's default); an export without one answers text queries with 422 naming the fix.
Filters (``where``) may name only ``filter_fields``: the metadata fields the answers show, i.e. every field of
the served gallery's metadata except ``path`` (the server's file paths), which is shown and filterable only
with ``--expose-paths``. Each search or embed request, body reading and decoding included, is answered within
``--timeout`` (else 504). Access (API key, Host) is checked by :mod:`.security` before any route runs.
"""
from __future__ import annotations

import asyncio
import time
from http import HTTPStatus
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Path as PathParam, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from tki_sdk.runtime import ImageLoadError

from tki_sdk.serve.errors import APIError
from tki_sdk.serve.inputs import (DEFAULT_K, parse_json, parse_k, parse_template, parse_texts, parse_vectors,
                                  parse_where)
from tki_sdk.serve.metrics import CONTENT_TYPE_LATEST
from tki_sdk.serve.reloading import GallerySnapshot
from tki_sdk.serve.service import NO_TEXT, Query, SearchService
from tki_sdk.serve.thumbnails import image_root_of

__all__ = ["build_routers", "STATIC_DIR"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
KEY_MAX = 2**64 - 2
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
#: Form fields besides the ``text`` ones (k, where, text_template, and a few a client may add).
OTHER_FIELDS = 16

def _openapi_bodies(max_k: int, max_texts: int, max_chars: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The request bodies of /v1/search and /v1/embed for the OpenAPI document (bounds from the config)."""
    k = {"type": "integer", "minimum": 1, "maximum": max_k, "default": DEFAULT_K}
    image = {"type": "array", "items": {"type": "string", "format": "binary"},
             "description": "one or more image files (any field name; every file part is a query)"}
    one_text = {"type": "string", "minLength": 1, "maxLength": max_chars}
    text = {"type": "array", "items": one_text, "maxItems": max_texts,
            "description": "one or more text queries (repeat the field); instead of images"}
    template = {"type": "string", "description": "raw, template, ensemble or a string holding {}; "
                "default: the export's (/v1/info text.default_query)"}
    where = {"type": "string", "description": 'JSON filter, e.g. {"domain": "sketch"}; see /v1/info filter_fields'}
    form = {"type": "object", "properties": {"image": image, "text": text, "text_template": template, "k": k,
                                             "where": where}}
    json_text = {"oneOf": [one_text, {"type": "array", "items": one_text, "maxItems": max_texts}]}
    search = {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": form},
        "application/json": {"schema": {"type": "object", "properties": {
            "vectors": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
            "text": json_text, "text_template": template,
            "k": k, "where": {"type": "object", "additionalProperties": True},
        }}},
    }}}
    embed_form = {"type": "object", "properties": {"image": image, "text": text, "text_template": template}}
    embed = {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": embed_form},
        "application/json": {"schema": {"type": "object", "required": ["text"], "properties": {
            "text": json_text, "text_template": template}}},
    }}}
    return search, embed


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _read_form(request: Request, service: SearchService
                     ) -> tuple[list[tuple[str, bytes]], dict[str, str], list[str] | None]:
    """File parts (name, bytes), other fields and the ``text`` fields (None when there is none) of a form body."""
    cfg = service.config
    try:
        form = await request.form(max_files=cfg.max_images, max_fields=cfg.max_texts + OTHER_FIELDS,
                                  max_part_size=cfg.max_body_bytes)
    except StarletteHTTPException as e:
        if "Too many files" in str(e.detail):
            raise APIError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"multipart body refused: {e.detail}") from None
        if "Too many fields" in str(e.detail):
            raise APIError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"too many form fields; at most {cfg.max_texts} "
                           "texts per request (--max-texts)") from None
        raise APIError(HTTPStatus.BAD_REQUEST, f"multipart body refused: {e.detail}") from None
    images: list[tuple[str, bytes]] = []
    fields: dict[str, str] = {}
    texts: list[str] | None = None
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                data = await value.read()
                label = value.filename or f"part {len(images)}"
                if not data:
                    raise APIError(HTTPStatus.BAD_REQUEST, f"{label}: empty file")
                images.append((label, data))
            elif name == "text":
                texts = (texts or []) + [value]
            else:
                fields[name] = value
    finally:
        await form.close()
    return images, fields, texts


def build_routers(service: SearchService) -> list[APIRouter]:
    cfg = service.config
    v1 = APIRouter(prefix="/v1", tags=["search"])
    ops = APIRouter(tags=["operations"])
    dim = service.embedder.embedding_dim
    unprocessable = HTTPStatus.UNPROCESSABLE_ENTITY
    search_body, embed_body = _openapi_bodies(cfg.max_k, cfg.max_texts, cfg.max_text_chars)

    def _text_query(query: Query, texts: Any, template: Any) -> Query:
        """``query`` with its validated texts and template; 422 naming the fix when the export has no text."""
        if service.text is None:
            raise APIError(unprocessable, NO_TEXT)
        query.template = parse_template(template, ensemble_ok=service.text.ensemble)
        query.texts = parse_texts(texts, cfg.max_texts, cfg.max_text_chars)
        return query

    async def _form_query(request: Request, *, search: bool) -> Query:
        images, fields, texts = await _read_form(request, service)
        if images and texts is not None:
            raise APIError(unprocessable, "send image files or text fields in one request, not both")
        if not images and texts is None:
            raise APIError(unprocessable, "no image or text in the request; send image files as multipart file "
                           "parts or text queries as 'text' fields")
        if images and fields.get("text_template"):
            raise APIError(unprocessable, "text_template applies to text queries only; drop it or send 'text'")
        query = Query()
        if search:  # cheap checks first: a bad k or where costs no decoding
            query.k = parse_k(fields.get("k"), cfg.max_k)
            query.where = parse_where(fields.get("where"), service.filter_fields())
        if texts is not None:
            return _text_query(query, texts, fields.get("text_template"))
        query.pixels = await service.decode(images)
        return query

    async def _json_body(request: Request, allowed: set[str]) -> dict[str, Any]:
        # parsed off the event loop: a 16 MB body takes a while, and other requests keep being served
        body = await asyncio.to_thread(parse_json, await request.body(), "the body")
        if not isinstance(body, dict):
            raise APIError(unprocessable, 'the JSON body must be an object like {"text": "a dog", "k": 10}')
        unknown = set(body) - allowed
        if unknown:
            raise APIError(unprocessable, f"unknown field(s) {sorted(unknown)}; use {', '.join(sorted(allowed))}")
        return body

    async def _json_query(request: Request) -> Query:
        body = await _json_body(request, {"vectors", "text", "text_template", "k", "where"})
        if ("vectors" in body) == ("text" in body):
            raise APIError(unprocessable, 'give either vectors or text, e.g. {"vectors": [[...]], "k": 10} or '
                           '{"text": "a dog", "k": 10}')
        if "vectors" in body and "text_template" in body:
            raise APIError(unprocessable, "text_template applies to text queries only; drop it or send text")
        query = Query(k=parse_k(body.get("k"), cfg.max_k), where=parse_where(body.get("where"), service.filter_fields()))
        if "text" in body:
            return _text_query(query, body["text"], body.get("text_template"))
        metric = service.live.snapshot.gallery.metric
        query.vectors = parse_vectors(body.get("vectors"), dim, cfg.max_images, nonzero=metric == "cos")
        return query

    async def _search(request: Request) -> tuple[Query, dict[str, Any]]:
        ctype = _content_type(request)
        if ctype in FORM_TYPES:
            query = await _form_query(request, search=True)
        elif ctype == "application/json":
            query = await _json_query(request)
        else:
            raise APIError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send multipart/form-data (image files or text "
                           "fields) or application/json (vectors or text)")
        return query, await service.run(query)

    def _template_used(query: Query) -> dict[str, Any]:
        if query.texts is None or service.text is None:
            return {}
        return {"text_template": query.template or service.text.default_query}

    @v1.post("/search", summary="nearest gallery items of query images or vectors", openapi_extra=search_body)
    async def search(request: Request) -> JSONResponse:
        t0 = time.perf_counter()
        async with service.admit():
            query, out = await service.within_deadline(_search(request))
        return JSONResponse({"results": out["results"], "k": query.k, "where": query.where, **_template_used(query),
                             "gallery_version": out["version"], "batch_queries": out["batch"],
                             "took_ms": round((time.perf_counter() - t0) * 1000, 3)})

    async def _embed(request: Request) -> tuple[Query, dict[str, Any]]:
        ctype = _content_type(request)
        if ctype in FORM_TYPES:
            query = await _form_query(request, search=False)
        elif ctype == "application/json":
            body = await _json_body(request, {"text", "text_template"})
            if "text" not in body:
                raise APIError(unprocessable, 'give text, e.g. {"text": ["a dog", "a horse"]}')
            query = _text_query(Query(), body["text"], body.get("text_template"))
        else:
            raise APIError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send images or text fields as multipart/form-data, "
                           "or text as application/json")
        return query, await service.run(query)

    @v1.post("/embed", summary="embeddings of images or texts", openapi_extra=embed_body)
    async def embed(request: Request) -> JSONResponse:
        t0 = time.perf_counter()
        async with service.admit():
            query, out = await service.within_deadline(_embed(request))
        vecs = out["vectors"]
        return JSONResponse({"embeddings": vecs.tolist(), "dim": int(vecs.shape[1]), **_template_used(query),
                             "model_fingerprint": service.embedder.model_fingerprint,
                             "batch_queries": out["batch"], "took_ms": round((time.perf_counter() - t0) * 1000, 3)})

    def _item(key: int) -> tuple[GallerySnapshot, dict[str, Any]]:
        snap = service.live.snapshot
        meta = snap.gallery.get_metadata(key)[0] if snap.gallery.contains(key) else None
        if meta is None:
            raise APIError(HTTPStatus.NOT_FOUND, f"no item {key} in the gallery (version {snap.version or 'unversioned'})")
        return snap, meta

    @v1.get("/items/{key}", summary="metadata of one gallery item")
    async def item(key: int = PathParam(ge=0, le=KEY_MAX)) -> dict[str, Any]:
        snap, meta = _item(key)
        return {"key": key, "metadata": service.public(meta), "gallery_version": snap.version}

    @v1.get("/items/{key}/thumbnail", summary="bounded-size JPEG of one gallery item",
            response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
    async def thumbnail(key: int = PathParam(ge=0, le=KEY_MAX)) -> Response:
        snap, meta = _item(key)
        path = meta.get("path")
        if not isinstance(path, str) or not path:
            raise APIError(HTTPStatus.NOT_FOUND, f"item {key} names no image file")
        root = image_root_of(meta, cfg.image_root)
        if root is None:
            raise APIError(HTTPStatus.NOT_FOUND, f"item {key} names no image file")
        loop = asyncio.get_running_loop()

        async def make() -> bytes:
            return await loop.run_in_executor(service.decode_pool, service.thumbnails.get, snap.version, key,
                                              Path(path), root)

        async with service.admit():
            try:
                data = await service.within_deadline(make())
            except ImageLoadError as e:
                raise APIError(HTTPStatus.NOT_FOUND, f"the image of item {key} cannot be served ({e.reason})") from None
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
            "filter_fields": sorted(service.filter_fields()),
            "text": ({"available": False} if service.text is None else
                     {"available": True, "default_query": service.text.default_query,
                      "ensemble": service.text.ensemble, "context_length": service.text.context_length}),
            "limits": {"max_k": cfg.max_k, "max_batch": cfg.max_batch, "max_wait_ms": cfg.max_wait_ms,
                       "max_images": cfg.max_images, "max_texts": cfg.max_texts,
                       "max_text_chars": cfg.max_text_chars, "max_body_bytes": cfg.max_body_bytes,
                       "max_pixels": cfg.max_pixels, "max_request_pixels": cfg.max_request_pixels,
                       "request_timeout_s": cfg.request_timeout_s},
            "auth": cfg.api_key is not None,
        }

    @ops.get("/healthz", summary="the process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @ops.get("/readyz", summary="ready to answer searches (503 while starting or draining)")
    async def readyz() -> JSONResponse:
        if not service.ready:
            return JSONResponse({"status": "not ready"}, status_code=HTTPStatus.SERVICE_UNAVAILABLE,
                                headers={"Retry-After": "1"})
        return JSONResponse({"status": "ready", "gallery_version": service.live.snapshot.version})

    @ops.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        service.metrics.queue_depth(service.batcher.depth)
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @ops.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    return [v1, ops]
