"""The one-line argparse parser and ``run_main``: bad input ends in one line on stderr and an exit status.

Exit statuses are those of :mod:`tki_sdk.common.errors`; this module only prints them.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from tki_sdk.common.errors import EXIT_INTERRUPTED, UsageError, one_line, printable

__all__ = ["OneLineParser", "print_error", "run_main"]


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

    :class:`UsageError` -> its ``code``; ``KeyboardInterrupt`` -> 130. Other exceptions propagate: they are
    bugs, and a traceback is what a bug report needs.
    """
    try:
        return int(body())
    except UsageError as e:
        print_error(e.prog or prog, e)
        return e.code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
