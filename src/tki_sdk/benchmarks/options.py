"""What a suite's ``run(args)`` receives: its options as attributes.

``tki-bench`` builds it from the command line (``tki_sdk.cli.bench``, with each suite's flags from
``tki_sdk.cli.bench_options``); a program can pass any object with the same attributes, e.g.
``types.SimpleNamespace``. Every suite reads :attr:`quick`, :attr:`out_dir`, :attr:`suite_dir`,
:attr:`no_progress` and :attr:`name`, and its own options under the names of its flags (``--per-class`` ->
``per_class``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

__all__ = ["SuiteOptions"]


class SuiteOptions(Protocol):
    """The options of one suite run (see the module docstring)."""

    quick: bool  #: CI-sized run
    out_dir: Path  #: results root
    suite_dir: Path  #: ``out_dir/<suite>``, where the suite writes its plots
    no_progress: bool  #: no progress bars or status lines
    name: str | None  #: result file stem, when given

    def __getattr__(self, name: str) -> Any: ...
