"""A readers-writer lock: many readers at once, or one writer (re-entrant), never both.

``with lock:`` takes it exclusively (re-entrant in the owning thread, like ``threading.RLock``);
``with lock.shared():`` takes it shared: any number of threads may hold it shared together, and the thread
that holds it exclusively may also take it shared (it is already alone). Readers are preferred: a waiting
writer does not stop new readers, so a reader that nests shared sections cannot deadlock.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

__all__ = ["ReadWriteLock"]


class ReadWriteLock:
    """Shared / exclusive lock (see the module docstring)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._owner: int | None = None
        self._depth = 0

    # exclusive
    def acquire(self) -> None:
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._depth += 1
                return
            while self._owner is not None or self._readers:
                self._cond.wait()
            self._owner, self._depth = me, 1

    def release(self) -> None:
        with self._cond:
            if self._owner != threading.get_ident():
                raise RuntimeError("release of a ReadWriteLock not held exclusively by this thread")
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._cond.notify_all()

    def __enter__(self) -> "ReadWriteLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # shared
    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:  # the writer itself: already alone
                mine = False
            else:
                while self._owner is not None:
                    self._cond.wait()
                self._readers += 1
                mine = True
        try:
            yield
        finally:
            if mine:
                with self._cond:
                    self._readers -= 1
                    if not self._readers:
                        self._cond.notify_all()
