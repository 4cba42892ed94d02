"""Class labels the prompts are built from: the true class names, or random words that avoid them.

The paper's Table 6 compares (1) the dataset's class names with (2) "randomly selecting text labels that
don't overlap with the actual label in the dataset". Strategy 2 draws its words from a fixed list shipped
with the package (``label_words.txt``: common concrete nouns), with a seeded generator, so a run is
reproducible and ``config.json`` can record exactly which words stood in for which class.

A word *overlaps* a true label, and is never drawn, when after normalisation (lower case, ``_`` and ``-``
as spaces, a trailing plural ``s`` / ``es`` dropped) one of its tokens equals a token of the label, or one
contains the other (``house`` excludes ``lighthouse``; tokens of at least 3 letters). The number of labels
drawn equals the number of classes; the i-th word stands in for the i-th class in the prompts
"a [DOMAIN] style of [word]".
"""
from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Sequence
from importlib import resources
from typing import Any

from tki_sdk.train.config import LABEL_STRATEGIES

__all__ = ["LABEL_STRATEGIES", "WORD_LIST", "word_list", "word_list_sha256", "overlaps", "random_labels",
           "prompt_labels"]

WORD_LIST = "label_words.txt"


def _text() -> str:
    return resources.files("tki_sdk.train").joinpath(WORD_LIST).read_text(encoding="utf-8")


def word_list() -> list[str]:
    """The shipped words, in file order (comments and blank lines skipped)."""
    return [ln.strip() for ln in _text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def word_list_sha256() -> str:
    """SHA-256 of the shipped word file (recorded with every strategy-2 run)."""
    return hashlib.sha256(_text().encode("utf-8")).hexdigest()


@functools.lru_cache(maxsize=4096)
def _tokens(label: str) -> frozenset[str]:
    out = set()
    for tok in label.lower().replace("_", " ").replace("-", " ").split():
        out.add(tok)
        for suffix in ("es", "s"):
            if tok.endswith(suffix) and len(tok) - len(suffix) >= 3:
                out.add(tok[: -len(suffix)])
    return frozenset(out)


def overlaps(word: str, label: str) -> bool:
    """Whether ``word`` overlaps the true label ``label`` (see the module docstring)."""
    for a in _tokens(word):
        for b in _tokens(label):
            if a == b or (min(len(a), len(b)) >= 3 and (a in b or b in a)):
                return True
    return False


def random_labels(true_classes: Sequence[str], seed: int = 0, words: Sequence[str] | None = None) -> list[str]:
    """``len(true_classes)`` distinct words from ``words`` (default: the shipped list), none overlapping any
    true class, drawn with ``random.Random(seed)``. Raises ``ValueError`` when too few words are left."""
    pool = [w for w in (word_list() if words is None else list(words))
            if not any(overlaps(w, c) for c in true_classes)]
    pool = list(dict.fromkeys(pool))
    n = len(true_classes)
    if len(pool) < n:
        raise ValueError(f"the label word list has {len(pool)} words that overlap none of the {n} classes; "
                         "strategy 'random' needs one per class (use --labels true, or fewer classes)")
    return random.Random(seed).sample(pool, n)


def prompt_labels(true_classes: Sequence[str], strategy: str = "true", seed: int = 0) -> tuple[list[str], dict[str, Any]]:
    """The labels the prompts use and the record ``config.json`` keeps (``labels`` field)."""
    if strategy not in LABEL_STRATEGIES:
        raise ValueError(f"label strategy must be one of {LABEL_STRATEGIES}, got {strategy!r}")
    if strategy == "true":
        return list(true_classes), {"strategy": "true"}
    words = random_labels(true_classes, seed)
    return words, {"strategy": "random", "seed": int(seed), "prompt_labels": words,
                   "word_list": WORD_LIST, "word_list_sha256": word_list_sha256()}
