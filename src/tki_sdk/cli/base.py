"""The one-line argparse parser and ``run_main``: bad input ends in one line on stderr and an exit status.

Exit statuses are those of :mod:`tki_sdk.common.errors`; this module only prints them.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from tki_sdk.common.errors import EXIT_INTERRUPTED, EXIT_MISSING, UsageError, one_line, printable
from tki_sdk.common.extras import MissingExtraError

__all__ = ["OneLineParser", "configure_logging", "print_error", "run_main"]


def print_error(prog: str, message: str | BaseException) -> None:
    """Print ``<prog>: error: <message>`` as one line on stderr."""
    text = one_line(message) if isinstance(message, BaseException) else printable(message)
    print(f"{prog}: error: {text}", file=sys.stderr)


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are a :class:`UsageError` (``<message> (see <prog> --help)``), not a usage block.

    The entry point catches it (:func:`run_main`) and prints one line; sub-parsers made with
    ``add_subparsers(parser_class=OneLineParser)`` behave the same.
    """

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see {self.prog} --help)", prog=self.prog)


def run_main(prog: str, body: Callable[[], int]) -> int:
    """Run a console script's ``body`` and turn user errors into one line and an exit status.

    :class:`UsageError` -> its ``code``; :class:`~tki_sdk.common.extras.MissingExtraError` -> 3;
    ``KeyboardInterrupt`` -> 130. Other exceptions propagate: they are
    bugs, and a traceback is what a bug report needs.
    """
    try:
        return int(body())
    except UsageError as e:
        print_error(e.prog or prog, e)
        return e.code
    except MissingExtraError as e:
        print_error(prog, e)
        return EXIT_MISSING
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


#: Environment variable that sets the console scripts' log level (DEBUG, INFO, WARNING, ERROR).
LOG_ENV = "TKI_LOG"


class _NoRandomInitNotice(logging.Filter):
    """Drops open_clip's "No pretrained weights loaded ... initialized randomly" warning: tki records the
    weights source of every checkpoint itself (``config.json`` ``weights``, shown by ``tki info``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "root" and str(record.msg).startswith("No pretrained weights loaded"))


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (not the stream of the first call), so a
    program that swaps ``sys.stderr`` (a test capturing output, a redirect) gets the lines."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: D102
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # noqa: D102
        pass


def configure_logging(level: str | None = None, *, progress: bool = True) -> None:
    """The console scripts' logging (library code only logs): one stderr handler, ``<level> <logger>:
    <message>``, at ``level`` or ``$TKI_LOG`` (default WARNING). Progress status lines
    (:mod:`tki_sdk.common.progress`, off a terminal) are shown unless ``progress`` is False. Called once by
    each entry point; a second call changes nothing."""
    logging.getLogger("tki_sdk.progress").setLevel(logging.INFO if progress else logging.WARNING)
    root = logging.getLogger()
    if any(isinstance(f, _NoRandomInitNotice) for h in root.handlers for f in h.filters):
        return
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_NoRandomInitNotice())
    root.addHandler(handler)
    root.setLevel((level or os.environ.get(LOG_ENV) or "WARNING").upper())
