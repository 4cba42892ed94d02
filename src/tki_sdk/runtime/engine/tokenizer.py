"""CLIP's byte-level BPE tokenizer without torch: the token ids of open_clip's ``SimpleTokenizer``.

For a string ``s`` and context length ``L`` (77 for CLIP)::

    clean(s)   = " ".join(html.unescape(html.unescape(ftfy.fix_text(s))).strip().split()).lower()
    words      = the pieces of clean(s) matched by  <start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|
                 [\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+   (case-insensitive)
    tokens     = for each word: its UTF-8 bytes mapped to printable characters (GPT-2's byte table), the last
                 one marked "</w>", merged pairwise by the lowest-ranked merge of the vocabulary file until
                 none applies; each piece's id in the vocabulary
    ids(s)     = [<sot>] + tokens + [<eot>], cut to L keeping <eot> as the last id, padded with 0 to L

The vocabulary is open_clip's ``bpe_simple_vocab_16e6.txt.gz`` (the first 48,894 merges), so ids run
0..49,407 with <start_of_text> = 49,406 and <end_of_text> = 49,407. An export carries its own copy of the
file (recorded with size and SHA-256 in ``tki.json``).

Dependencies: ``ftfy`` and ``regex``, exactly what open_clip itself uses. The text cleanup *is* ftfy's
``fix_text`` (mojibake repair, HTML entity handling, Unicode normalisation); no other library reproduces its
heuristics, and the ``\\p{L}`` / ``\\p{N}`` classes need ``regex`` (the standard ``re`` has no Unicode
property classes). A Rust tokenizer would be faster but could not give open_clip's ids on every string.
"""
from __future__ import annotations

import gzip
import html
import os
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = ["ClipTokenizer", "TokenizerError", "VOCAB_FILE", "DEFAULT_CONTEXT_LENGTH", "N_MERGES"]

#: File name of the vocabulary inside an export folder.
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
DEFAULT_CONTEXT_LENGTH = 77
#: Merges CLIP uses from the vocabulary file (open_clip: lines 1 .. 49152-256-2).
N_MERGES = 49152 - 256 - 2
SOT, EOT = "<start_of_text>", "<end_of_text>"


class TokenizerError(ValueError):
    """The vocabulary file is missing or not CLIP's BPE merges file; the message says what to do."""


@lru_cache()
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table: each byte -> a printable character (printable Latin-1 bytes map to themselves)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _pairs(word: Sequence[str]) -> set[tuple[str, str]]:
    return {(word[i], word[i + 1]) for i in range(len(word) - 1)}


class ClipTokenizer:
    """Strings -> CLIP token ids (see the module docstring); ``__call__`` gives int64 ``[N, context_length]``.

    Args:
        vocab_path: CLIP's ``bpe_simple_vocab_16e6.txt.gz`` (gzip; ``#version`` line, then one merge a line).
        context_length: ids per string after padding / truncation.
    """

    def __init__(self, vocab_path: str | os.PathLike, context_length: int = DEFAULT_CONTEXT_LENGTH) -> None:
        import ftfy
        import regex

        self._fix_text = ftfy.fix_text
        path = Path(vocab_path)
        try:
            lines = gzip.open(path).read().decode("utf-8").split("\n")
        except FileNotFoundError:
            raise TokenizerError(f"vocabulary file {path} is missing; re-export the model with tki-export") from None
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise TokenizerError(f"vocabulary file {path} is not a gzip BPE merges file ({e}); "
                                 "re-export the model with tki-export") from None
        merges = [tuple(m.split()) for m in lines[1:N_MERGES + 1]]
        if len(merges) != N_MERGES or any(len(m) != 2 for m in merges):
            raise TokenizerError(f"vocabulary file {path} does not hold CLIP's {N_MERGES:,} BPE merges; "
                                 "re-export the model with tki-export")
        if int(context_length) < 2:
            raise ValueError(f"context_length must be >= 2 (start and end tokens), got {context_length}")
        self.context_length = int(context_length)
        self.byte_encoder = _bytes_to_unicode()
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + [SOT, EOT]
        self.encoder = {v: i for i, v in enumerate(vocab)}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.cache: dict[str, str] = {SOT: SOT, EOT: EOT}
        self.sot_token_id, self.eot_token_id = self.encoder[SOT], self.encoder[EOT]
        self.vocab_size = len(self.encoder)
        self.pat = regex.compile(
            SOT + "|" + EOT + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )

    def clean(self, text: str) -> str:
        """open_clip's ``lower`` cleanup: ftfy, HTML unescaped twice, whitespace collapsed, lower-cased."""
        text = html.unescape(html.unescape(self._fix_text(text))).strip()
        return " ".join(text.split()).strip().lower()

    def bpe(self, token: str) -> str:
        """Space-separated BPE pieces of one byte-mapped word (the last piece ends with ``</w>``)."""
        cached = self.cache.get(token)
        if cached is not None:
            return cached
        word: tuple[str, ...] = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = _pairs(word)
        if not pairs:
            return token + "</w>"
        ranks = self.bpe_ranks
        while True:
            bigram = min(pairs, key=lambda p: ranks.get(p, float("inf")))
            if bigram not in ranks:
                break
            first, second = bigram
            new: list[str] = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new.extend(word[i:])
                    break
                new.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new.append(first + second)
                    i += 2
                else:
                    new.append(word[i])
                    i += 1
            word = tuple(new)
            if len(word) == 1:
                break
            pairs = _pairs(word)
        out = " ".join(word)
        self.cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without start / end tokens and without truncation."""
        ids: list[int] = []
        for piece in self.pat.findall(self.clean(str(text))):
            mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(mapped).split(" "))
        return ids

    def __call__(self, texts: str | Iterable[str], context_length: int | None = None) -> np.ndarray:
        """int64 ``[N, L]``: ``<sot>`` ids ``<eot>`` per string, truncated to L with ``<eot>`` last, 0-padded."""
        if isinstance(texts, str):
            texts = [texts]
        length = int(context_length or self.context_length)
        texts = list(texts)
        out = np.zeros((len(texts), length), dtype=np.int64)
        for r, t in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(t), self.eot_token_id]
            if len(ids) > length:
                ids = ids[:length]
                ids[-1] = self.eot_token_id
            out[r, : len(ids)] = ids
        return out
