"""``SearchService``: the model, the live gallery, the decode pool and the micro-batcher of one instance.

Request path: ``admit()`` (at most ``max_queue`` requests in flight, else 503 + ``Retry-After``) ->
``within_deadline()`` (everything below answers within ``request_timeout_s``, else 504 and the rest of the
request's work is cancelled) -> ``decode()`` (the images' declared pixels checked against
``max_request_pixels`` before any decoding, then decoded and preprocessed in a pool of ``workers`` threads,
at most ``workers`` images of one request at a time, so that the images of concurrent requests interleave
and a small query never waits behind a large one) -> ``run()`` (one :class:`~tki_sdk.serve.batching.Job` on
the micro-batcher).

Text queries skip decoding and take the same micro-batcher: one inference thread owns the cores (a text
call beside an image call would oversubscribe them), concurrent text queries coalesce into one graph call,
and the deadline, the queue bound, cancellation and the batch metrics apply to them unchanged.

One batch (:meth:`SearchService.process_batch`, on the inference thread): the pixels of every image query
are stacked into one ``Embedder.embed_pixels`` call; the texts of every text query are one
``Embedder.embed_texts`` call per query construction (``text_template``); the queries of the batch are then grouped by
``(k, where)`` and each group is one ``Gallery.search`` call on the gallery snapshot taken at the start of
the batch (so a reload never splits a batch); the metadata of all hits is read in one lookup.
"""
from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, AsyncIterator, Awaitable, Mapping, TypeVar

import numpy as np
from PIL import Image

from tki_sdk.runtime import MISSING_KEY, Embedder, ImageLoadError

from tki_sdk.serve.batching import Job, MicroBatcher, QueueFull
from tki_sdk.serve.collaborators import BatcherLike, EmbedderLike
from tki_sdk.serve.config import ServeConfig
from tki_sdk.serve.errors import APIError
from tki_sdk.serve.metrics import ServiceMetrics
from tki_sdk.serve.reloading import GallerySnapshot, LiveGallery
from tki_sdk.serve.thumbnails import ThumbnailCache

log = logging.getLogger(__name__)

__all__ = ["SearchService", "Query", "TextSupport", "PRIVATE_FIELDS", "declared_pixels"]

#: Metadata fields neither sent to clients nor filterable (server file paths), unless ``expose_paths``.
PRIVATE_FIELDS = frozenset({"path"})

T = TypeVar("T")


def declared_pixels(data: bytes) -> int:
    """Width x height that the header of the encoded image ``data`` declares (0 when it has no readable
    header: the decoder then refuses the file with its own reason). Reads the header only."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except Exception:  # noqa: BLE001 - any unreadable header is the decoder's to report
        return 0
    return max(0, int(w)) * max(0, int(h))


@dataclass
class Query:
    """What one request asks of the inference thread.

    ``pixels`` [n, 3, H, W] (images to embed), ``texts`` (n text queries, made into text for the head by
    ``template``; None: the export's default) or ``vectors`` [n, D] (already embedded); ``k`` None means
    embed only. ``where`` is the validated filter, ``where_key`` its canonical JSON (the batch grouping key).
    """

    pixels: np.ndarray | None = None
    vectors: np.ndarray | None = None
    texts: list[str] | None = None
    template: str | None = None
    k: int | None = None
    where: Mapping[str, Any] | None = None

    @property
    def size(self) -> int:
        if self.texts is not None:
            return len(self.texts)
        arr = self.pixels if self.pixels is not None else self.vectors
        return int(arr.shape[0]) if arr is not None else 0

    @property
    def where_key(self) -> str:
        return json.dumps(self.where, sort_keys=True) if self.where else ""


@dataclass(frozen=True)
class TextSupport:
    """What the served export offers for text queries: its default query construction (``tki.json``
    ``text.default_query``), whether the TKI ensemble is possible (learned domain vectors exported) and the
    tokenizer's context length."""

    default_query: str
    ensemble: bool
    context_length: int


#: The one line a text query gets from an export without a text artifact.
NO_TEXT = ("this model has no text encoder (exported before text search or with --no-text); re-export it with "
           "tki-export without --no-text to search by words")


def public_metadata(meta: Mapping[str, Any] | None, hidden: frozenset[str] = PRIVATE_FIELDS) -> dict[str, Any]:
    """``meta`` without the ``hidden`` fields."""
    return {k: v for k, v in (meta or {}).items() if k not in hidden}


class SearchService:
    """Everything one running instance holds; ``start()`` / ``stop()`` bracket its life."""

    def __init__(self, config: ServeConfig, embedder: EmbedderLike | None = None) -> None:
        self.config = config
        self.metrics = ServiceMetrics()
        #: Metadata fields that answers leave out and filters may not name.
        self.hidden_fields: frozenset[str] = frozenset() if config.expose_paths else PRIVATE_FIELDS
        self.embedder: EmbedderLike = embedder if embedder is not None else Embedder(
            config.model, precision=config.precision, threads=config.threads,
            preprocess={"max_pixels": int(config.max_pixels)},
        )
        self.live = LiveGallery(
            config.gallery, self.embedder.model_fingerprint, interval_s=config.reload_interval_s,
            on_reload=self._reloaded, on_failure=lambda _msg: self.metrics.reload_failures.inc(),
        )
        snap = self.live.snapshot
        if snap.gallery.ndim != self.embedder.embedding_dim:
            raise ValueError(f"gallery vectors are {snap.gallery.ndim}-d but the model embeds "
                             f"{self.embedder.embedding_dim}-d; serve the gallery with the model that built it")
        self.metrics.set_gallery(snap.version, snap.size)
        #: None when the export has no text artifact (text queries get 422).
        self.text: TextSupport | None = None
        if self.embedder.has_text:  # files checked against tki.json now: a damaged one stops the start
            enc = self.embedder.text_encoder
            self.text = TextSupport(default_query=str(enc.default_query), ensemble=enc.domain_vectors is not None,
                                    context_length=int(enc.context_length))
        self.batcher: BatcherLike = MicroBatcher(
            self.process_batch, max_batch=config.max_batch, max_wait_s=config.max_wait_ms / 1000.0,
            max_queue=config.max_queue, observer=self.metrics, upstream=None if config.fixed_wait else (lambda: self.in_flight - self.queued),
        )
        self.decode_pool = ThreadPoolExecutor(config.workers, thread_name_prefix="tki-decode")
        self.thumbnails = ThumbnailCache(config.thumbnail_px, config.max_pixels, config.thumbnail_cache)
        self.in_flight = 0  # admitted requests not answered yet
        self.queued = 0  # of those, the ones whose job is on the batcher
        self.draining = False

    # ------------------------------------------------------------------ life
    def start(self) -> None:
        self.batcher.start()
        self.live.start()

    def stop(self) -> None:
        """Answer everything already queued, then release threads."""
        self.draining = True
        self.batcher.stop()
        self.live.stop()
        self.decode_pool.shutdown(wait=True)

    @property
    def ready(self) -> bool:
        return self.batcher.alive and not self.draining

    def _reloaded(self, snap: GallerySnapshot) -> None:
        self.metrics.reloads.inc()
        self.metrics.set_gallery(snap.version, snap.size)

    def filter_fields(self) -> frozenset[str]:
        """The metadata fields a ``where`` may name: those the answers show (every field of the served
        version's metadata but the hidden ones)."""
        return self.live.snapshot.fields - self.hidden_fields

    def public(self, meta: Mapping[str, Any] | None) -> dict[str, Any]:
        return public_metadata(meta, self.hidden_fields)

    # ------------------------------------------------------------------ request path
    async def within_deadline(self, work: Awaitable[T]) -> T:
        """``work`` awaited for at most ``request_timeout_s``; at the deadline it is cancelled (its pending
        decoding is dropped, its queued job skipped) and the request gets 504."""
        try:
            return await asyncio.wait_for(work, self.config.request_timeout_s)
        except asyncio.TimeoutError:
            self.metrics.rejected.labels(reason="timeout").inc()
            raise APIError(HTTPStatus.GATEWAY_TIMEOUT, f"no answer within {self.config.request_timeout_s:g} s "
                           "(--timeout; decoding included); send fewer or smaller images, or retry later",
                           {"Retry-After": "1"}) from None

    @contextlib.asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Count one request in flight; 503 with Retry-After when ``max_queue`` are already in flight."""
        if self.draining:
            raise APIError(HTTPStatus.SERVICE_UNAVAILABLE, "the service is shutting down; retry on another instance",
                           {"Retry-After": "1"})
        if self.in_flight >= self.config.max_queue:
            self.metrics.rejected.labels(reason="queue_full").inc()
            raise APIError(HTTPStatus.SERVICE_UNAVAILABLE, f"overloaded: {self.in_flight} requests in flight (--max-queue "
                           f"{self.config.max_queue}); retry after 1 s", {"Retry-After": "1"})
        self.in_flight += 1
        self.metrics.in_flight.set(self.in_flight)
        try:
            yield
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.set(self.in_flight)

    def _decode_one(self, data: bytes, name: str) -> np.ndarray:
        try:
            return self.embedder.preprocessor.process(data)
        except ImageLoadError as e:
            too_big = "too many pixels" in e.reason
            status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE if too_big else HTTPStatus.BAD_REQUEST
            raise APIError(status, f"{name}: {e.reason}") from None
        except Exception as e:  # noqa: BLE001 - any decoder failure is the upload's fault
            raise APIError(HTTPStatus.BAD_REQUEST,
                           f"{name}: cannot decode this image ({type(e).__name__}: {e})") from None

    def check_pixel_budget(self, images: list[tuple[str, bytes]]) -> int:
        """Sum of the pixels the images declare; 413 above ``max_request_pixels`` (nothing decoded yet)."""
        total = sum(declared_pixels(data) for _, data in images)
        if total > self.config.max_request_pixels:
            raise APIError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                           f"the images of this request declare {total:,} pixels together; at most "
                           f"{self.config.max_request_pixels:,} per request (--max-request-pixels): send "
                           "fewer or smaller images")
        return total

    async def decode(self, images: list[tuple[str, bytes]]) -> np.ndarray:
        """Encoded images -> preprocessed pixels [n, 3, H, W] (pixel budget first, then decoding).

        At most ``workers`` images of this request are in the pool at a time, each lane submitting its next
        image only when its last one is done: the images of concurrent requests interleave in the pool's
        queue instead of one request's images all going first. Cancelling this coroutine (the request's
        deadline, a client that left) drops the images not started yet."""
        self.check_pixel_budget(images)
        loop = asyncio.get_running_loop()
        out: list[np.ndarray | None] = [None] * len(images)
        todo = iter(enumerate(images))

        async def lane() -> None:
            for i, (name, data) in todo:  # one shared iterator: each image is taken by one lane
                out[i] = await loop.run_in_executor(self.decode_pool, self._decode_one, data, name)

        lanes = [asyncio.ensure_future(lane()) for _ in range(min(self.config.workers, len(images)))]
        try:
            await asyncio.gather(*lanes)
        finally:
            for t in lanes:
                t.cancel()
        return np.stack(out)

    async def run(self, query: Query) -> dict[str, Any]:
        """Queue ``query`` on the micro-batcher and wait for its result (run it under :meth:`within_deadline`)."""
        try:
            job = self.batcher.submit(query, query.size)
        except QueueFull as e:
            self.metrics.rejected.labels(reason="queue_full").inc()
            raise APIError(HTTPStatus.SERVICE_UNAVAILABLE, f"overloaded: {e}; retry after 1 s",
                           {"Retry-After": "1"}) from None
        self.queued += 1
        try:
            return await asyncio.shield(job.future)
        except asyncio.CancelledError:
            job.abandoned = True  # the deadline passed or the client went away: the batch skips this job
            raise
        finally:
            self.queued -= 1

    # ------------------------------------------------------------------ inference thread
    def process_batch(self, jobs: list[Job]) -> None:
        snap = self.live.snapshot
        vectors: dict[int, np.ndarray] = {}
        jobs = self._embed_texts(jobs, vectors)
        image_jobs = [j for j in jobs if j.payload.pixels is not None]
        if image_jobs:
            try:
                emb = self.embedder.embed_pixels(np.concatenate([j.payload.pixels for j in image_jobs]))
            except Exception as e:  # noqa: BLE001
                log.exception("embedding failed")
                for j in image_jobs:
                    j.fail(APIError(HTTPStatus.INTERNAL_SERVER_ERROR, f"the model failed on this batch ({type(e).__name__}); retry"))
                image_jobs, jobs = [], [j for j in jobs if j.payload.pixels is None]
            else:
                s = 0
                for j in image_jobs:
                    vectors[id(j)] = emb[s : s + j.size]
                    s += j.size
        for j in jobs:
            if j.payload.vectors is not None:
                vectors[id(j)] = j.payload.vectors
        jobs = [j for j in jobs if id(j) in vectors]
        queries = sum(j.size for j in jobs)
        groups: dict[tuple[int, str], list[Job]] = {}
        for j in jobs:
            if j.payload.k is None:
                j.resolve({"vectors": vectors[id(j)], "version": snap.version, "batch": queries})
            else:
                groups.setdefault((j.payload.k, j.payload.where_key), []).append(j)
        for (k, _), group in groups.items():
            self._search_group(snap, k, group, vectors, queries)

    def _embed_texts(self, jobs: list[Job], vectors: dict[int, np.ndarray]) -> list[Job]:
        """Embed the text jobs' texts, one ``embed_texts`` call per template, into ``vectors``; returns the jobs
        still to answer (a failed call fails its jobs)."""
        by_template: dict[str | None, list[Job]] = {}
        for j in jobs:
            if j.payload.texts is not None:
                by_template.setdefault(j.payload.template, []).append(j)
        failed: set[int] = set()
        for template, group in by_template.items():
            try:
                emb = self.embedder.embed_texts([t for j in group for t in j.payload.texts], template=template,
                                                batch_size=self.config.max_batch)
            except ValueError as e:  # a construction this export cannot make (checked earlier; kept as a 422)
                err = APIError(HTTPStatus.UNPROCESSABLE_ENTITY, str(e))
            except Exception as e:  # noqa: BLE001
                log.exception("text embedding failed")
                err = APIError(HTTPStatus.INTERNAL_SERVER_ERROR, f"the text model failed on this batch "
                               f"({type(e).__name__}); retry")
            else:
                s = 0
                for j in group:
                    vectors[id(j)] = emb[s : s + j.size]
                    s += j.size
                continue
            for j in group:
                j.fail(err)
                failed.add(id(j))
        return [j for j in jobs if id(j) not in failed]

    def _search_group(self, snap: GallerySnapshot, k: int, group: list[Job], vectors: dict[int, np.ndarray],
                      batch_queries: int) -> None:
        q = np.concatenate([vectors[id(j)] for j in group])
        try:
            keys, dists = snap.gallery.search(q, k, where=group[0].payload.where)
            valid = keys != MISSING_KEY
            uniq = np.unique(keys[valid])
            metas = dict(zip(uniq.tolist(), snap.gallery.get_metadata(uniq))) if uniq.size else {}
        except ValueError as e:
            for j in group:
                j.fail(APIError(HTTPStatus.BAD_REQUEST, str(e)))
            return
        except Exception as e:  # noqa: BLE001
            log.exception("search failed")
            for j in group:
                j.fail(APIError(HTTPStatus.INTERNAL_SERVER_ERROR, f"search failed ({type(e).__name__}); retry"))
            return
        s = 0
        for j in group:
            rows = []
            for r in range(s, s + j.size):
                m = valid[r]
                rk = keys[r][m].tolist()
                rows.append({"keys": rk, "distances": [float(d) for d in dists[r][m]],
                             "metadata": [self.public(metas.get(key)) for key in rk]})
            s += j.size
            j.resolve({"results": rows, "version": snap.version, "batch": batch_queries})
