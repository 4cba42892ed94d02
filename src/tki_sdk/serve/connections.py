"""A cap on open connections for uvicorn, so that a flood of idle sockets cannot exhaust the process's file
descriptors and ``/healthz`` keeps answering at the cap.

Contract of :class:`ConnectionGuard` (used through :meth:`ConnectionGuard.protocol_class`, uvicorn's ``http``
protocol): at most ``cap`` connections stay open. When a new connection would make ``cap + 1``, the oldest
*idle* connection (no request being processed: never sent one, or between requests) is closed; only when
none is idle is the new one closed instead. A connection that sends nothing for ``idle_s`` seconds, before
its first request or between requests, is closed (uvicorn's keep-alive timeout, started at connect).
``cap`` never exceeds what the file limit allows: ``RLIMIT_NOFILE - 4 x backlog - 64`` (asyncio accepts up
to ``backlog`` sockets per loop turn before their protocols run, and closes the evicted ones a turn later);
:func:`raise_file_limit` first raises the soft limit towards what the cap needs, up to the hard limit.
uvicorn's own ``limit_concurrency`` is not used: it answers 503 to every request, ``/healthz`` included,
once the connections reach it, where this guard keeps the newest connections served.
Shedding is logged as one line at most every ``log_every_s`` seconds (with the count since the last line);
:func:`configure_log_throttle` does the same for asyncio's "out of system resource" accept errors.
"""
from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections import OrderedDict
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

__all__ = ["ConnectionGuard", "fit_to_file_limit", "raise_file_limit", "configure_log_throttle", "RESERVED_FDS"]

#: File descriptors kept for everything but client sockets (model and gallery files, pipes, the listener).
RESERVED_FDS = 64


def raise_file_limit(max_connections: int, backlog: int) -> int:
    """Raise the soft ``RLIMIT_NOFILE`` towards what ``max_connections`` needs (never above the hard limit,
    never lowered); returns the soft limit now in force. For the process that serves, called once at start."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = int(max_connections) + 4 * int(backlog) + RESERVED_FDS
    if soft == resource.RLIM_INFINITY or soft >= want:
        return int(soft) if soft != resource.RLIM_INFINITY else want
    new = want if hard == resource.RLIM_INFINITY else min(want, int(hard))
    if new > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        except (ValueError, OSError) as e:
            log.info("cannot raise the file limit from %d to %d: %s", soft, new, e)
            return int(soft)
        log.info("file limit raised from %d to %d for --max-connections %d", soft, new, max_connections)
        return new
    return int(soft)


def fit_to_file_limit(requested: int, backlog: int) -> int:
    """``requested`` lowered so that ``cap + 4 x backlog + RESERVED_FDS`` fits the soft ``RLIMIT_NOFILE``."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return int(requested)
    room = int(soft) - 4 * int(backlog) - RESERVED_FDS
    if room < 16:
        raise ValueError(f"the file limit ({soft}) leaves no room for connections with backlog {backlog}; "
                         "raise it (ulimit -n) or lower --backlog")
    return min(int(requested), room)


def _busy(proto: H11Protocol) -> bool:
    cycle = proto.cycle
    return cycle is not None and not cycle.response_complete


class ConnectionGuard:
    """Open connections, oldest first, and the shedding policy of the module docstring."""

    def __init__(self, max_connections: int, *, backlog: int, idle_s: float, log_every_s: float = 60.0) -> None:
        self.cap = fit_to_file_limit(max_connections, backlog)
        if self.cap < max_connections:
            log.warning("--max-connections lowered from %d to %d to fit the file limit (ulimit -n)",
                        max_connections, self.cap)
        self.idle_s = float(idle_s)
        self.log_every_s = float(log_every_s)
        self._open: OrderedDict[int, H11Protocol] = OrderedDict()
        self.shed_total = 0
        self._shed_unlogged = 0
        self._last_log = -float("inf")

    @property
    def open_count(self) -> int:
        return len(self._open)

    def protocol_class(self) -> type[asyncio.Protocol]:
        """uvicorn's h11 protocol, reporting to this guard and timing out idle connections from the start."""
        guard = self

        class GuardedH11Protocol(H11Protocol):
            def connection_made(self, transport: Any) -> None:  # type: ignore[override]
                super().connection_made(transport)
                if self.timeout_keep_alive_task is None:
                    self.timeout_keep_alive_task = self.loop.call_later(
                        guard.idle_s, self.timeout_keep_alive_handler)
                guard.opened(self)

            def connection_lost(self, exc: Exception | None) -> None:
                guard.closed(self)
                super().connection_lost(exc)

        return GuardedH11Protocol

    def opened(self, proto: H11Protocol) -> None:
        self._open[id(proto)] = proto
        if len(self._open) <= self.cap:
            return
        victim = next((p for p in self._open.values() if p is not proto and not _busy(p)), proto)
        self._open.pop(id(victim), None)
        victim.transport.close()
        self.shed_total += 1
        self._shed_unlogged += 1
        now = time.monotonic()
        if now - self._last_log >= self.log_every_s:
            log.warning("connection cap of %d reached: closed %d idle connection(s) since the last report "
                        "(--max-connections; next report in %g s at the earliest)", self.cap,
                        self._shed_unlogged, self.log_every_s)
            self._last_log, self._shed_unlogged = now, 0

    def closed(self, proto: H11Protocol) -> None:
        self._open.pop(id(proto), None)


class _OncePerInterval(logging.Filter):
    """Let a record whose message contains one of ``needles`` through at most once per ``interval_s``."""

    def __init__(self, needles: tuple[str, ...], interval_s: float) -> None:
        super().__init__()
        self.needles = needles
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._dropped: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        needle = next((n for n in self.needles if n in msg), None)
        if needle is None:
            return True
        now = time.monotonic()
        if now - self._last.get(needle, -float("inf")) < self.interval_s:
            self._dropped[needle] = self._dropped.get(needle, 0) + 1
            return False
        dropped = self._dropped.pop(needle, 0)
        self._last[needle] = now
        record.msg, record.args = f"{msg} ({dropped} more like it since the last report)", None
        record.exc_info, record.exc_text = None, None  # one line, no traceback
        return True


_THROTTLED = ("out of system resource", "Too many open files")


def configure_log_throttle(interval_s: float = 60.0) -> None:
    """Throttle asyncio's and uvicorn's file-limit errors to one line per ``interval_s`` (idempotent)."""
    for name in ("asyncio", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _OncePerInterval) for f in logger.filters):
            logger.addFilter(_OncePerInterval(_THROTTLED, interval_s))
