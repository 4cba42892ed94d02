"""argparse ``type=`` parsers shared by the suites' options: comma-separated lists, refused in one line."""
from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

__all__ = ["int_list", "fraction_list", "choice_list"]


def int_list(s: str) -> list[int]:
    """``"1,8,32"`` -> ``[1, 8, 32]`` (``1e5`` accepted); every value >= 1, at least one."""
    try:
        vals = [int(float(v)) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {s!r}")
    return vals


def fraction_list(s: str) -> list[float]:
    """``"0.01,0.5"`` -> ``[0.01, 0.5]``; every value in [0, 1]; ``""`` -> ``[]``."""
    try:
        vals = [float(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions, got {s!r}") from None
    if any(not 0.0 <= v <= 1.0 for v in vals):
        raise argparse.ArgumentTypeError(f"fractions must be in [0, 1], got {s!r}")
    return vals


def choice_list(allowed: Sequence[str], what: str) -> Callable[[str], list[str]]:
    """A parser of ``"a,b"`` where every value is one of ``allowed`` (``what`` names the option)."""
    def parse(s: str) -> list[str]:
        vals = [v.strip() for v in s.split(",") if v.strip()]
        bad = [v for v in vals if v not in allowed]
        if not vals or bad:
            raise argparse.ArgumentTypeError(f"{what} must be from {','.join(allowed)}; got {s!r}")
        return vals
    return parse
