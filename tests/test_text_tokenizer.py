"""The torch-free CLIP tokenizer gives open_clip's token ids on every kind of string."""
from __future__ import annotations

import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from runtime_fixtures import BLOCK_TRAINING_STACK
from tki_sdk.runtime.engine.tokenizer import ClipTokenizer, TokenizerError

open_clip = pytest.importorskip("open_clip")
from open_clip.tokenizer import default_bpe  # noqa: E402

ACCENTED = "àáâãäåæçèéêëìíîïñòóôõöøùúûüýÿÀÉÎÕÜßœŒłŁđĐšŠžŽčČőŰğİşı"
CJK = "猫犬馬家吉他照片素描卡通絵画写真の犬고양이사진강아지中文字符号测试"
EMOJI = ["😀", "🐶", "🐴", "🏠", "🎸", "👍🏽", "👨‍👩‍👧", "🇫🇷", "❤️", "✨", "🦄"]
ENTITIES = ["&amp;", "&lt;", "&gt;", "&quot;", "&#39;", "&nbsp;", "&eacute;", "&amp;amp;", "&#x1F600;", "&copy;",
            "&hellip;", "&mdash;", "&bogus;"]
WORDS = ["dog", "horse", "house", "guitar", "photo", "sketch", "of", "a", "the", "painting", "cartoon",
         "elephant", "giraffe", "person", "it's", "they're", "I'll", "we've", "x-ray", "3D", "42", "CAPS", "MiXeD"]
PUNCT = list(".,;:!?'\"()[]{}<>/\\|@#$%^&*-_+=~`")
WHITESPACE = [" ", "\t", "\n", "\r\n", "\u00a0", "\u2003", "\u3000", "\u200b", "\x0b", "\x0c"]


def _mojibake(s: str, rng: random.Random) -> str:
    """UTF-8 text decoded with a wrong codec (what ftfy repairs), sometimes twice."""
    enc = rng.choice(["latin-1", "cp1252", "cp1252"])
    out = s.encode("utf-8").decode(enc, errors="replace")
    if rng.random() < 0.3:
        out = out.encode("utf-8").decode(enc, errors="replace")
    return out


def generated_strings(n: int = 5200, seed: int = 22) -> list[str]:
    """``n`` strings: ASCII, accents, CJK, emoji, HTML entities, mojibake, 300-word strings, empty, whitespace."""
    rng = random.Random(seed)
    out = ["", " ", "   ", "\t\n", "\u00a0\u3000", "a", "A photo of a dog.", "<start_of_text>",
           "<end_of_text> dog <start_of_text>"]

    def words(k: int, pool: list[str]) -> str:
        return " ".join(rng.choice(pool) for _ in range(k))

    def chars(k: int, alphabet: str | list[str]) -> str:
        return "".join(rng.choice(alphabet) for _ in range(k))

    kinds = ["ascii", "accents", "cjk", "emoji", "entities", "mojibake", "long", "whitespace", "mixed", "random"]
    while len(out) < n:
        kind = kinds[len(out) % len(kinds)]
        if kind == "ascii":
            s = words(rng.randint(1, 12), WORDS + PUNCT)
        elif kind == "accents":
            s = " ".join(chars(rng.randint(1, 8), ACCENTED + "aeiou") for _ in range(rng.randint(1, 5)))
        elif kind == "cjk":
            s = chars(rng.randint(1, 20), CJK + " ")
        elif kind == "emoji":
            s = words(rng.randint(1, 8), EMOJI + WORDS)
        elif kind == "entities":
            s = "".join(rng.choice(ENTITIES + WORDS + [" "]) for _ in range(rng.randint(1, 10)))
        elif kind == "mojibake":
            s = _mojibake(words(rng.randint(1, 6), WORDS + list(ACCENTED) + EMOJI + list(CJK[:6])), rng)
        elif kind == "long":
            s = words(300, WORDS + EMOJI + list(ACCENTED) + PUNCT)
        elif kind == "whitespace":
            s = chars(rng.randint(0, 6), WHITESPACE) + words(rng.randint(0, 3), WORDS) + chars(rng.randint(0, 4), WHITESPACE)
        elif kind == "mixed":
            s = words(rng.randint(1, 30), WORDS + EMOJI + ENTITIES + list(CJK) + list(ACCENTED) + PUNCT + WHITESPACE)
        else:  # random code points from the planes people type in (surrogates excluded)
            s = "".join(chr(rng.choice([rng.randint(32, 0x2FF), rng.randint(0x370, 0x52F), rng.randint(0x600, 0x6FF),
                                        rng.randint(0x900, 0x97F), rng.randint(0x3040, 0x30FF),
                                        rng.randint(0x4E00, 0x9FFF), rng.randint(0xAC00, 0xD7A3),
                                        rng.randint(0x1F300, 0x1FAFF)])) for _ in range(rng.randint(1, 25)))
        out.append(s)
    return out[:n]


@pytest.fixture(scope="module")
def strings() -> list[str]:
    return generated_strings()


def test_ids_equal_open_clip_on_generated_strings(strings):
    assert len(strings) >= 5000
    ours = ClipTokenizer(default_bpe(), context_length=77)(strings)
    ref = open_clip.tokenize(strings, context_length=77).numpy()
    bad = [i for i in range(len(strings)) if not np.array_equal(ours[i], ref[i])]
    assert not bad, f"{len(bad)} strings differ, first: {strings[bad[0]]!r}"
    # the set really exercises truncation (end token kept last) and the empty / whitespace-only case
    truncated = ref[:, -1] == 49407
    assert truncated.sum() >= 400
    assert ((ref != 0).sum(1) == 2).sum() >= 5


def test_short_context_truncates_like_open_clip(strings):
    sample = strings[:300]
    ours = ClipTokenizer(default_bpe(), context_length=16)(sample)
    ref = open_clip.tokenizer.SimpleTokenizer(context_length=16)(sample).numpy()
    assert np.array_equal(ours, ref)


def test_bad_vocabulary_is_one_line(tmp_path):
    with pytest.raises(TokenizerError, match="missing; re-export"):
        ClipTokenizer(tmp_path / "nope.txt.gz")
    (tmp_path / "v.txt.gz").write_bytes(b"not gzip")
    with pytest.raises(TokenizerError, match="not a gzip BPE merges file"):
        ClipTokenizer(tmp_path / "v.txt.gz")


def test_tokenizer_imports_no_torch():
    script = BLOCK_TRAINING_STACK + textwrap.dedent(
        """
        from tki_sdk.runtime.engine.tokenizer import ClipTokenizer
        ids = ClipTokenizer(sys.argv[1])(["a photo of a dog", ""])
        assert ids[0, 0] == 49406 and ids[1, :2].tolist() == [49406, 49407], ids
        assert not [m for m in sys.modules if m.split(".")[0] in BLOCKED]
        print("TOKENIZER-OK")
        """
    )
    r = subprocess.run([sys.executable, "-c", script, default_bpe()], capture_output=True, text=True, timeout=60,
                       cwd=str(Path(__file__).parent))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "TOKENIZER-OK" in r.stdout
