"""Helpers for the text tests: tiny models of each head geometry, their text artifacts, one full export with text."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np

_CACHE: dict[str, Any] = {}

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



def euclidean_model(seed: int = 0) -> Any:
    """Tiny random CLIP + a random Euclidean head and random domain vectors (the geometry ablation's model)."""
    import torch

    from tki_sdk.train.clip import load_clip
    from tki_sdk.train.head import HeadConfig, HyperbolicMLP
    from tki_sdk.train.model import TKIModel

    clip = load_clip("TKI-Tiny-ViT", None, init_seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = HyperbolicMLP(HeadConfig(in_dim=clip.embed_dim, out_dim=24, geometry="euclidean"))
        nu = torch.randn(5, clip.token_width) * 0.02
    return TKIModel(clip, head, nu).eval()


def text_artifact(name: str, model: Any, root: Path) -> dict[str, Any]:
    """``export_text`` of ``model`` into ``root/name`` (cached per name), with the runtime's TextEncoder on it."""
    if name not in _CACHE:
        from tki_sdk.export.text import export_text
        from tki_sdk.runtime.engine.text_encoder import TextEncoder

        out = root / name
        out.mkdir(parents=True)
        te = export_text(model, out, opset=18, threads=1)
        rec = te.record
        enc = TextEncoder(out / rec["artifacts"]["text_fp32"]["file"], out / rec["tokenizer"]["vocab"]["file"],
                          context_length=rec["tokenizer"]["context_length"], output_space=model.output_space,
                          curvature=(float(model.head.config.curvature) if model.head is not None
                                     and model.head.hyperbolic else None),
                          domain_vectors=(None if rec["domain_vectors"] is None
                                          else np.load(out / rec["domain_vectors"]["file"])),
                          prompt=rec["domain_prompt"], default_query=rec["default_query"],
                          input_names=rec["input_names"], output_name=rec["output_name"], threads=1)
        _CACHE[name] = {"out": out, "export": te, "encoder": enc, "model": model}
    return _CACHE[name]


def vanilla_export_with_text(root: Path) -> Path:
    """One ``tki-export --head none --model TKI-Tiny-ViT --precision fp32`` folder (image + text), cached."""
    if "vanilla_export" not in _CACHE:
        from tki_sdk.export.pipeline import ExportConfig, run_export

        out = root / "vanilla_export"
        run_export(ExportConfig(out=out, head="none", model_name="TKI-Tiny-ViT", precisions=("fp32",), val_count=4,
                                timing_rounds=1, time_torch=False, progress=False, threads=1))
        _CACHE["vanilla_export"] = out
    return _CACHE["vanilla_export"]
