"""Progress of long work: a tqdm bar on a terminal, elsewhere one status line every few seconds.

``progress_bar(total, desc)`` returns an object with ``update(n)``, ``set_postfix(**values)``,
``set_postfix_str(s)`` and ``close()``
(also a context manager):

- when ``stream`` (default ``sys.stderr``) is a terminal: a tqdm bar (tqdm is imported here, lazily: it comes
  with the ``train`` and ``runtime`` extras);
- otherwise (a log file, CI, a pipe): a line ``<desc>: <n>/<total> <unit> (<pct>%), <rate> <unit>/s, ETA <s>``
  logged at INFO on the ``tki_sdk.progress`` logger at most every ``interval`` seconds, and one final line,
  so ``tki demo > log 2>&1`` stays readable (no carriage-return refreshes);
- ``enabled=False``: nothing at all.

Library code never prints: the console scripts decide whether ``tki_sdk.progress`` lines are shown
(``tki_sdk.cli.base.configure_logging``).
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

__all__ = ["progress_bar", "LineStatus", "PROGRESS_LOGGER"]

PROGRESS_LOGGER = "tki_sdk.progress"
_log = logging.getLogger(PROGRESS_LOGGER)


class _Silent:
    """``enabled=False``: accepts every call, shows nothing."""

    n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def set_postfix(self, **values: Any) -> None:
        self.set_postfix_str(", ".join(f"{k}={v}" for k, v in values.items()))

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        pass

    def set_description_str(self, desc: str = "", refresh: bool = True) -> None:
        self.set_description(desc, refresh)

    def close(self) -> None:
        pass

    def __enter__(self) -> "_Silent":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class LineStatus(_Silent):
    """One INFO line on ``tki_sdk.progress`` at most every ``interval`` seconds, and one when closed."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", interval: float = 5.0) -> None:
        self.total, self.desc, self.unit, self.interval = total, desc, unit, float(interval)
        self.n = 0
        self.postfix = ""
        self._t0 = self._last = time.monotonic()
        self._closed = False

    def _line(self) -> str:
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        rate = self.n / elapsed
        parts = [f"{self.desc}: {self.n}" + (f"/{self.total}" if self.total else "") + f" {self.unit}"]
        if self.total:
            parts[0] += f" ({100.0 * self.n / self.total:.0f}%)"
        parts.append(f"{rate:.3g} {self.unit}/s")
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"ETA {(self.total - self.n) / rate:.0f} s")
        else:
            parts.append(f"{elapsed:.1f} s")
        if self.postfix:
            parts.append(self.postfix)
        return ", ".join(parts)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            _log.info(self._line())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _log.info(self._line())


def progress_bar(total: int | None, desc: str, *, unit: str = "it", enabled: bool = True,
                 stream: TextIO | None = None, interval: float = 5.0, leave: bool = True) -> Any:
    """A progress display for ``total`` steps (see the module docstring for which kind)."""
    if not enabled:
        return _Silent()
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return LineStatus(total, desc, unit, interval)
        return tqdm(total=total, desc=desc, unit=unit, file=stream, dynamic_ncols=True, leave=leave)
    return LineStatus(total, desc, unit, interval)
