"""The torch-free CLIP tokenizer gives open_clip's token ids on every kind of string."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from runtime_fixtures import BLOCK_TRAINING_STACK
from text_fixtures import generated_strings
from tki_sdk.runtime.engine.tokenizer import ClipTokenizer, TokenizerError

open_clip = pytest.importorskip("open_clip")
from open_clip.tokenizer import default_bpe  # noqa: E402


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
