"""``MicroBatcher``: one inference thread that coalesces concurrent queries into batches.

Contract: :meth:`MicroBatcher.submit` puts a :class:`Job` (``size`` queries) on a bounded queue and returns
an ``asyncio.Future`` of its result. The inference thread takes the first waiting job, then keeps taking
jobs while the batch holds fewer than ``max_batch`` queries, waiting at most ``max_wait_s`` after the first
one for more to arrive (a job that would overflow the batch starts the next one). With ``upstream`` (the
number of requests admitted but not queued yet, e.g. still decoding), the wait ends as soon as the queue
is empty and nothing is upstream: a lone request never waits for company that is not coming. ``process(jobs)`` runs
once per batch on that thread and must call :meth:`Job.resolve` or :meth:`Job.fail` for every job; a job
whose caller gave up (timeout, disconnect) is dropped before processing. A full queue raises
:class:`QueueFull` (the app answers 503). :meth:`stop` lets the thread finish every queued job first.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

log = logging.getLogger(__name__)

__all__ = ["Job", "MicroBatcher", "QueueFull", "BatchObserver"]


class QueueFull(Exception):
    """The batch queue holds ``max_queue`` jobs already."""


class BatchObserver(Protocol):
    def batch_done(self, queries: int, seconds: float) -> None: ...

    def queue_depth(self, depth: int) -> None: ...


@dataclass
class Job:
    """One request's queries. ``payload`` is what ``process`` needs; the result comes back through ``future``."""

    payload: Any
    size: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future = field(repr=False)
    enqueued: float = field(default_factory=time.perf_counter)
    abandoned: bool = False

    def resolve(self, value: Any) -> None:
        self.loop.call_soon_threadsafe(_set_result, self.future, value)

    def fail(self, exc: BaseException) -> None:
        self.loop.call_soon_threadsafe(_set_exception, self.future, exc)


def _set_result(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future, exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


_STOP = object()


class MicroBatcher:
    """Coalesce jobs into batches of at most ``max_batch`` queries on one thread (see the module docstring)."""

    def __init__(
        self,
        process: Callable[[list[Job]], None],
        *,
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
        observer: BatchObserver | None = None,
        upstream: Callable[[], int] | None = None,
        name: str = "tki-inference",
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait_s >= 0")
        self._process = process
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_s)
        self._queue: queue.Queue = queue.Queue(maxsize=int(max_queue))
        self._observer = observer
        self._upstream = upstream
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._carry: Job | None = None
        self._stopping = False

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def submit(self, payload: Any, size: int) -> Job:
        """Queue ``size`` queries from the running event loop; :class:`QueueFull` when the queue is full."""
        if self._stopping:
            raise QueueFull("the service is shutting down")
        loop = asyncio.get_running_loop()
        job = Job(payload=payload, size=max(1, int(size)), loop=loop, future=loop.create_future())
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"{self._queue.maxsize} requests are already waiting") from None
        if self._observer:
            self._observer.queue_depth(self._queue.qsize())
        return job

    def stop(self, timeout: float | None = 30.0) -> None:
        """Finish every queued job, then end the thread."""
        if not self._thread.is_alive():
            return
        self._stopping = True
        self._queue.put(_STOP)
        self._thread.join(timeout)

    # ------------------------------------------------------------------ inference thread
    def _next_batch(self) -> list[Job] | None:
        first = self._carry if self._carry is not None else self._queue.get()
        self._carry = None
        if first is _STOP:
            return None
        batch, size = [first], first.size
        deadline = time.perf_counter() + self.max_wait_s
        while size < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                job = self._wait_for_job(deadline)
                if job is None:
                    break
            if job is _STOP or size + job.size > self.max_batch:
                self._carry = job
                break
            batch.append(job)
            size += job.size
        return batch

    def _wait_for_job(self, deadline: float) -> Any:
        """The next job arriving before ``deadline``; None at the deadline or when nothing is upstream."""
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return None
            if self._upstream is not None and self._upstream() <= 0:
                try:
                    return self._queue.get_nowait()
                except queue.Empty:
                    return None
            try:
                # poll in short steps so that the wait ends as soon as nothing is upstream any more
                return self._queue.get(timeout=min(remaining, 0.0005 if self._upstream else remaining))
            except queue.Empty:
                continue

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if self._observer:
                self._observer.queue_depth(self._queue.qsize())
            live = [j for j in batch if not j.abandoned and not j.future.cancelled()]
            if not live:
                continue
            t0 = time.perf_counter()
            try:
                self._process(live)
            except BaseException as e:  # noqa: BLE001 - a failed batch fails its jobs, never the thread
                log.exception("inference batch failed")
                for j in live:
                    j.fail(e)
            if self._observer:
                self._observer.batch_done(sum(j.size for j in live), time.perf_counter() - t0)
