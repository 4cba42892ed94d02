"""The text artifact of an export: ``text.onnx``, the tokenizer's vocabulary, the learned domain vectors.

:func:`export_text` builds, in the staging folder of an export (:mod:`.pipeline`):

1. ``text.onnx``: :class:`~.text_fused.FusedTextEncoder` (CLIP's text tower + the same head as the images),
   standard ONNX, dynamic batch, context length fixed (CLIP's, 77);
2. ``bpe_simple_vocab_16e6.txt.gz``: open_clip's BPE vocabulary, read by the runtime's torch-free tokenizer;
3. ``domain_vectors.npy`` (TKI head only): the checkpoint's P learned word vectors nu_p, for the ensemble;

then validates what the runtime executes (:class:`~tki_sdk.runtime.engine.text_encoder.TextEncoder` on these
files: its tokenizer and onnxruntime) against float64 torch: raw strings against ``TKIModel.encode_text``
(open_clip's tokenizer), and the ensemble prompts of two queries against the fused module with token ids
assembled from open_clip's tokenizer as the prompt learner assembles them. Each row's cosine must reach the
artifact table's ``text_fp32`` threshold, batch 1 and batched.

fp16 and int8 text artifacts are not built: the text tower's share of a query's cost is small (one query, not
a gallery of images), and reduced precisions would need their own parity study; ``tki.json`` says so under
``text.not_exported``.
"""
from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from tki_sdk.common.artifacts import ARTIFACT_KINDS, TEXT
from tki_sdk.common.model_metadata import (
    TEXT_INPUT_NAMES,
    TEXT_OUTPUT_NAME,
    sha256_file,
)
from tki_sdk.export.onnx_export import ExportError, save_proto
from tki_sdk.export.text_fused import FusedTextEncoder, text_reference
from tki_sdk.export.validate import ParityResult
from tki_sdk.train.prompts import CLASS_SUFFIX, DOMAIN_PREFIX, DOMAIN_SUFFIX

__all__ = ["TextExport", "export_text", "TextUnsupported", "VALIDATION_TEXTS", "TEXT_FILES", "text_file_names"]

KEY = "text_fp32"
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
DOMAIN_VECTORS_FILE = "domain_vectors.npy"
#: Every file the text step may write into an export folder.
TEXT_FILES = frozenset({ARTIFACT_KINDS[KEY].file, VOCAB_FILE, DOMAIN_VECTORS_FILE})
#: Strings the text artifact is validated on (every kind of text a user types, and a truncated one).
VALIDATION_TEXTS = (
    "", "   ", "dog", "a photo of a dog", "A sketch of a HORSE!", "guitar", "house in the snow at night",
    "café crème brûlée", "naïve señor façade", "猫", "写真の犬", "고양이 사진", "🐶🐴🏠", "a 🎸 on stage",
    "&amp; &lt;tag&gt; &quot;q&quot;", "donâ€™t stop", "it's a giraffe, isn't it?", "x-ray of a 3D printed part",
    " ".join(["elephant", "painting", "of", "the", "sea"] * 60),
)
ENSEMBLE_QUERIES = ("dog", "a red guitar")


class TextUnsupported(ValueError):
    """This CLIP's text side cannot be exported for the runtime (not CLIP's BPE tokenizer or text tower)."""


def text_file_names(record: dict[str, Any] | None) -> set[str]:
    """Files a ``tki.json`` ``text`` record lists (artifacts, vocabulary, domain vectors)."""
    if not isinstance(record, dict):
        return set()
    names = {a.get("file") for a in (record.get("artifacts") or {}).values() if isinstance(a, dict)}
    names.add(((record.get("tokenizer") or {}).get("vocab") or {}).get("file"))
    names.add((record.get("domain_vectors") or {}).get("file"))
    return {n for n in names if isinstance(n, str)} & TEXT_FILES


@dataclass
class TextExport:
    """What :func:`export_text` produced: the ``tki.json`` ``text`` record, its parity, the files written."""

    record: dict[str, Any]
    parity: ParityResult
    files: list[str]
    info: dict[str, Any] = field(default_factory=dict)


def _file_record(path: Path) -> dict[str, Any]:
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def _check_tokenizer(model: Any) -> Any:
    from open_clip.tokenizer import SimpleTokenizer

    tok = model.clip.tokenizer
    if not isinstance(tok, SimpleTokenizer) or tok.clean_fn.__name__ != "_clean_lower" or tok.reduction_fn:
        raise TextUnsupported(f"{model.clip.model_name}'s tokenizer is not CLIP's BPE tokenizer with lower-case "
                              "cleanup; its text encoder is not exported (pass --no-text to silence this)")
    return tok


def export_onnx_text(fused: Any, path: Path, opset: int) -> int:
    """``fused`` (:class:`~.text_fused.FusedTextEncoder`) -> ``path``: standard ONNX, dynamic batch, checked;
    returns the opset used (at least 18)."""

    opset = max(18, int(opset))  # the torch.export-based exporter emits opset 18 and up (image --opset 17 too)
    n, L, W = 2, fused.context_length, fused.token_width
    example = (torch.zeros(n, L, dtype=torch.long), torch.zeros(n, W), torch.full((n,), -1, dtype=torch.long))
    example[0][:, 0], example[0][:, 1] = 49406, 49407
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(
                fused, example, None, dynamo=True, opset_version=int(opset), input_names=list(TEXT_INPUT_NAMES),
                output_names=[TEXT_OUTPUT_NAME], dynamic_shapes={k: {0: batch} for k in TEXT_INPUT_NAMES},
                external_data=False, verbose=False, report=False)
    except Exception as e:  # noqa: BLE001 - exporter failures come in many types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"text: torch.onnx.export failed at opset {opset} ({type(e).__name__}: {first})") from None
    proto = prog.model_proto
    proto.producer_name = "tki-sdk"
    save_proto(proto, path)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # noqa: BLE001 - the checker raises several types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"text: {path.name} fails onnx.checker: {first}") from None
    return opset


def _cosines(y: np.ndarray, r: np.ndarray) -> np.ndarray:
    y, r = y.astype(np.float64), r.astype(np.float64)
    return (y * r).sum(1) / np.maximum(np.linalg.norm(y, axis=1) * np.linalg.norm(r, axis=1), 1e-300)


def _ensemble_ids(tok: Any, queries: tuple[str, ...], prompt: dict[str, str], length: int) -> np.ndarray:
    """Token ids of ``a [DOMAIN] style of {q}.`` assembled from open_clip's tokenizer as the prompt learner does."""
    head = [tok.sot_token_id, *tok.encode(prompt["prefix"]), tok.encode(prompt["placeholder"])[0],
            *tok.encode(prompt["suffix"])]
    out = np.zeros((len(queries), length), dtype=np.int64)
    for r, q in enumerate(queries):
        ids = head + tok.encode(q) + tok.encode(prompt["end"]) + [tok.eot_token_id]
        if len(ids) > length:
            ids = ids[:length]
            ids[-1] = tok.eot_token_id
        out[r, :len(ids)] = ids
    return out


def validate_text(model: Any, enc: Any, threshold: float) -> ParityResult:
    """Parity of the runtime's ``TextEncoder`` ``enc`` with float64 torch (module docstring)."""

    tok = model.clip.tokenizer
    texts = list(VALIDATION_TEXTS)
    ref_ids = tok(texts).numpy()
    n, width = len(texts), enc.token_width
    ref_raw = text_reference(model, ref_ids, np.zeros((n, width)), np.full(n, -1))
    groups: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    ids, dv, pos, _ = enc.prompt_inputs(texts, "raw")
    notes = []
    if not np.array_equal(ids, ref_ids):
        notes.append(f"runtime tokenizer ids differ from open_clip's on {int((ids != ref_ids).any(1).sum())} strings")
    groups["texts"] = (enc.run(ids, dv, pos), ref_raw)
    groups["texts_batch1"] = (np.concatenate([enc.run(ids[i:i + 1], dv[i:i + 1], pos[i:i + 1]) for i in range(3)]),
                              ref_raw[:3])
    if enc.domain_vectors is not None:
        ids, dv, pos, _ = enc.prompt_inputs(list(ENSEMBLE_QUERIES), "ensemble")
        p = enc.domain_vectors.shape[0]
        want = np.repeat(_ensemble_ids(tok, ENSEMBLE_QUERIES, enc.prompt, enc.context_length), p, axis=0)
        if not np.array_equal(ids, want):
            notes.append("runtime ensemble prompt ids differ from the prompt learner's")
        nu = model.domain_vectors.detach().double().numpy()
        ref = text_reference(model, want, np.tile(nu, (len(ENSEMBLE_QUERIES), 1)), pos)
        groups["ensemble_prompts"] = (enc.run(ids, dv, pos), ref)
    per_group, worst, min_cos, all_cos, max_err, finite = {}, "-", 2.0, [], 0.0, True
    for g, (y, r) in groups.items():
        c = _cosines(y, r)
        finite &= bool(np.isfinite(y).all())
        err = float(np.abs(y - r).max()) if y.size else 0.0
        per_group[g] = {"min_cosine": float(c.min()), "mean_cosine": float(c.mean()), "max_abs_error": err,
                        "count": int(len(c))}
        all_cos.append(c)
        max_err = max(max_err, err)
        if float(c.min()) < min_cos:
            min_cos, worst = float(c.min()), g
    res = ParityResult(KEY, ARTIFACT_KINDS[KEY].file, threshold, min_cos, float(np.concatenate(all_cos).mean()),
                       max_err, finite, worst, per_group, [1, len(texts)], output=TEXT_OUTPUT_NAME, notes=notes)
    if notes:
        res.error = "; ".join(notes)
    return res


def export_text(model: Any, stage: Path, *, opset: int, threads: int | None = None) -> TextExport:
    """Build and validate the text files in ``stage`` (module docstring). :class:`TextUnsupported` when the
    model's text side is not CLIP's; :class:`~.onnx_export.ExportError` when the exporter fails."""
    from open_clip.tokenizer import default_bpe

    from tki_sdk.runtime.engine.text_encoder import DEFAULT_TEMPLATE, TextEncoder

    tok = _check_tokenizer(model)
    try:
        fused = FusedTextEncoder(model)
    except ValueError as e:
        raise TextUnsupported(f"text encoder not exported: {e}") from None
    kind = ARTIFACT_KINDS[KEY]
    path = stage / kind.file
    opset = export_onnx_text(fused, path, opset)
    vocab = stage / VOCAB_FILE
    shutil.copyfile(default_bpe(), vocab)
    files = [path.name, vocab.name]
    dv_record = None
    dv = getattr(model, "domain_vectors", None)
    if dv is not None and model.head is not None:
        dv_path = stage / DOMAIN_VECTORS_FILE
        arr = dv.detach().cpu().float().numpy()
        np.save(dv_path, arr, allow_pickle=False)
        dv_record = {**_file_record(dv_path), "shape": list(arr.shape), "dtype": "float32"}
        files.append(dv_path.name)
    prompt = {"prefix": DOMAIN_PREFIX, "placeholder": "x", "suffix": DOMAIN_SUFFIX, "end": CLASS_SUFFIX}
    default_query = "ensemble" if dv_record else DEFAULT_TEMPLATE
    enc = TextEncoder(path, vocab, context_length=fused.context_length, output_space=model.output_space,
                      curvature=None if model.head is None or not model.head.hyperbolic else float(model.head.config.curvature),
                      domain_vectors=None if dv_record is None else np.load(stage / DOMAIN_VECTORS_FILE),
                      prompt=prompt, default_query=default_query, input_names=TEXT_INPUT_NAMES,
                      output_name=TEXT_OUTPUT_NAME, threads=threads)
    parity = validate_text(model, enc, kind.parity_threshold)
    record = {
        "artifacts": {KEY: {**_file_record(path), "role": TEXT, "format": kind.format, "runtime": kind.runtime,
                            "precision": kind.precision, "opset": int(opset),
                            "parity_min_cosine": parity.min_cosine, "parity_pass": parity.passed}},
        "default_precision": KEY,
        "input_names": list(TEXT_INPUT_NAMES),
        "output_name": TEXT_OUTPUT_NAME,
        "tokenizer": {"kind": "clip_bpe", "clean": "lower", "context_length": int(fused.context_length),
                      "sot_token_id": int(tok.sot_token_id), "eot_token_id": int(tok.eot_token_id),
                      "vocab": _file_record(vocab)},
        "domain_vectors": dv_record,
        "domain_prompt": prompt,
        "default_query": default_query,
        "reference": "TKIModel.encode_text in float64 (torch); ensemble prompts: the fused text module in float64",
        "not_exported": {"fp16": "text artifacts are fp32 only (no reduced-precision parity study for text)",
                         "int8": "text artifacts are fp32 only (no reduced-precision parity study for text)"},
    }
    return TextExport(record, parity, files, {"token_width": fused.token_width})
