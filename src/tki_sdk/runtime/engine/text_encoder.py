r"""Texts -> embeddings in the images' space, with an export's text artifact (torch-free).

The export's text graph (``text.onnx``, ``tki.json`` ``text``) maps ``token_ids [N, L]``, ``domain_vector
[N, W]`` and ``domain_position [N]`` to the embedding ``TKIModel.encode_text`` gives (CLIP's text tower, then
the same head h as the images; see :mod:`tki_sdk.export.text_fused`). A query becomes text for it in one of
three ways (``template``):

- ``"raw"``: the query as typed;
- a template with ``{}`` (``"a photo of a {}."``, CLIP's usual prompt): the query put into it;
- ``"ensemble"`` (TKI): the query put into each learned domain prompt ``a [DOMAIN]_p style of {query}.``
  (the prompts h was trained on in stage 2: the word vector nu_p at [DOMAIN]_p, p = 1..P), the P embeddings
  averaged in the head's space::

      unit outputs (ball_l2, clip_l2):  e = normalize(sum_p e_p)
      raw ball points (ball):           e = expmap0(mean_p logmap0(e_p))      (curvature c of the head)
      raw Euclidean head (euclidean):   e = mean_p e_p

The default (``tki.json`` ``text.default_query``) is the ensemble for a TKI head: it puts the query where
the head learned to map domain-specific text into the domain-agnostic space, and averaging the P styles
removes the style of any one of them. Vanilla CLIP (``--head none``) has no learned vectors: its default
is the template.

The model, the vocabulary and the domain vectors are checked against ``tki.json`` (size and SHA-256) before
they are opened, as image artifacts are (:mod:`~tki_sdk.runtime.engine.artifact_check`).
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tki_sdk.common.model_metadata import (
    TEXT_INPUT_NAMES,
    TEXT_OUTPUT_NAME,
    ModelMetadata,
)
from tki_sdk.runtime.engine.artifact_check import checked_artifact_path
from tki_sdk.runtime.engine.tokenizer import ClipTokenizer
from tki_sdk.runtime.native import import_onnxruntime

log = logging.getLogger(__name__)

__all__ = ["TextEncoder", "TextUnavailableError", "QUERY_KINDS", "DEFAULT_TEMPLATE", "MAX_TEXT_CHARS",
           "resolve_template"]

RAW, ENSEMBLE = "raw", "ensemble"
#: The query constructions by name (a template string with ``{}`` is the third kind).
QUERY_KINDS = (RAW, "template", ENSEMBLE)
DEFAULT_TEMPLATE = "a photo of a {}."
#: Longest query accepted (characters); CLIP reads at most 75 tokens of it anyway.
MAX_TEXT_CHARS = 10_000
_FIX = "re-export the model with tki-export (without --no-text) to search by text"


class TextUnavailableError(ValueError):
    """The export has no text artifact (exported before text search, or with ``--no-text``)."""


def resolve_template(template: str | None, default: str) -> str:
    """``None`` -> ``default``; ``"template"`` -> :data:`DEFAULT_TEMPLATE`; ``"raw"`` / ``"ensemble"`` / a string
    holding ``{}`` as given; anything else is a ``ValueError`` naming the choices."""
    t = default if template is None else str(template)
    if t == "template":
        return DEFAULT_TEMPLATE
    if t in (RAW, ENSEMBLE) or "{}" in t:
        return t
    raise ValueError(f"text template {t!r} is neither raw, template, ensemble nor a template holding {{}} "
                     f"(e.g. {DEFAULT_TEMPLATE!r})")


class TextEncoder:
    """The text artifact of one export. Build with :meth:`from_metadata`; :meth:`embed` is the entry point.

    Safe to call from several threads (onnxruntime's ``run`` is; the tokenizer's cache is locked).
    """

    def __init__(self, model_path: str | os.PathLike, vocab_path: str | os.PathLike, *, context_length: int,
                 output_space: str, curvature: float | None, domain_vectors: np.ndarray | None,
                 prompt: dict[str, Any], default_query: str, input_names: Sequence[str], output_name: str,
                 threads: int | None = None, providers: Sequence[Any] | None = None) -> None:

        ort = import_onnxruntime()
        self.tokenizer = ClipTokenizer(vocab_path, context_length)
        self.context_length = int(context_length)
        self.output_space = output_space
        self.curvature = curvature
        self.domain_vectors = None if domain_vectors is None else np.ascontiguousarray(domain_vectors, np.float32)
        self.prompt = dict(prompt)
        self.default_query = default_query
        self.input_names = list(input_names)
        self.output_name = output_name
        so = ort.SessionOptions()
        if threads is not None:
            so.intra_op_num_threads = int(threads)
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        avail = ort.get_available_providers()
        wanted = [p for p in (providers or ["CPUExecutionProvider"]) if (p[0] if isinstance(p, tuple) else p) in avail]
        self.session = ort.InferenceSession(str(model_path), sess_options=so,
                                            providers=wanted or ["CPUExecutionProvider"])
        self.provider = self.session.get_providers()[0]
        self.token_width = int(self.session.get_inputs()[1].shape[1])
        self._lock = threading.Lock()
        enc = self.tokenizer.encode
        self._prefix = enc(self.prompt.get("prefix", "a"))
        self._suffix = enc(self.prompt.get("suffix", "style of"))
        self._end = enc(self.prompt.get("end", "."))
        self._placeholder = enc(self.prompt.get("placeholder", "x"))[:1]

    @classmethod
    def from_metadata(cls, metadata: ModelMetadata, model_dir: str | os.PathLike, *, verify: str = "sha256",
                      precision: str | None = None, threads: int | None = None,
                      providers: Sequence[Any] | None = None) -> "TextEncoder":
        """The text artifact ``precision`` (default: the export's ``text.default_precision``) of the export in
        ``model_dir``, its files checked against ``tki.json``. :class:`TextUnavailableError` when it has none."""
        text = metadata.text
        model_dir = Path(model_dir)
        if not isinstance(text, dict) or not text.get("artifacts"):
            raise TextUnavailableError(f"{model_dir} has no text encoder (exported before text search or with "
                                       f"--no-text); {_FIX}")
        arts = text["artifacts"]
        key = precision or text.get("default_precision") or next(iter(arts))
        if key not in arts:
            raise ValueError(f"text artifact {key!r} not in this export; available: {', '.join(sorted(arts))}")
        path, _ = checked_artifact_path(model_dir, key, arts[key], verify)
        tok = text.get("tokenizer") or {}
        vocab, _ = checked_artifact_path(model_dir, "vocabulary", tok.get("vocab") or {}, verify)
        dv = None
        if text.get("domain_vectors"):
            dpath, _ = checked_artifact_path(model_dir, "domain_vectors", text["domain_vectors"], verify)
            dv = np.load(dpath, allow_pickle=False)
        if not path.is_file():
            raise FileNotFoundError(f"text model file {path} is missing; {_FIX}")
        return cls(path, vocab, context_length=int(tok.get("context_length", 77)),
                   output_space=metadata.output_space, curvature=metadata.curvature, domain_vectors=dv,
                   prompt=text.get("domain_prompt") or {}, default_query=str(text.get("default_query") or RAW),
                   input_names=text.get("input_names") or TEXT_INPUT_NAMES,
                   output_name=text.get("output_name") or TEXT_OUTPUT_NAME,
                   threads=threads, providers=providers)

    # ------------------------------------------------------------------ inputs
    def _ids(self, seq: list[int]) -> np.ndarray:
        L = self.context_length
        ids = [self.tokenizer.sot_token_id, *seq, self.tokenizer.eot_token_id]
        if len(ids) > L:
            ids = ids[:L]
            ids[-1] = self.tokenizer.eot_token_id
        out = np.zeros(L, dtype=np.int64)
        out[: len(ids)] = ids
        return out

    def prompt_inputs(self, texts: Sequence[str], template: str | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Graph inputs for ``texts`` under ``template`` (see the module docstring): ``(token_ids, domain_vector,
        domain_position, owner)``, ``owner[r]`` the index of the text row ``r`` belongs to (P rows per text for
        the ensemble, one else)."""
        t = resolve_template(template, self.default_query)
        texts = [self._checked(s) for s in texts]
        n, width = len(texts), self.token_width
        with self._lock:
            if t == ENSEMBLE:
                if self.domain_vectors is None:
                    raise ValueError("this export has no learned domain vectors (vanilla CLIP, --head none); use "
                                     f"--text-template raw or a template such as {DEFAULT_TEMPLATE!r}")
                p = self.domain_vectors.shape[0]
                pos = 1 + len(self._prefix)
                rows = [self._ids([*self._prefix, *self._placeholder, *self._suffix, *self.tokenizer.encode(s),
                                   *self._end]) for s in texts]
                ids = np.repeat(np.stack(rows) if rows else np.zeros((0, self.context_length), np.int64), p, axis=0)
                dv = np.tile(self.domain_vectors, (n, 1))
                position = np.full(n * p, pos, dtype=np.int64)
                owner = np.repeat(np.arange(n), p)
                return ids, dv, position, owner
            filled = texts if t == RAW else [t.replace("{}", s) for s in texts]
            ids = self.tokenizer(filled) if filled else np.zeros((0, self.context_length), np.int64)
        return ids, np.zeros((n, width), np.float32), np.full(n, -1, np.int64), np.arange(n)

    @staticmethod
    def _checked(s: Any) -> str:
        if not isinstance(s, str):
            raise ValueError(f"a text query must be a string, got {type(s).__name__}")
        if len(s) > MAX_TEXT_CHARS:
            raise ValueError(f"a text query is {len(s):,} characters; at most {MAX_TEXT_CHARS:,} are accepted")
        return s

    # ------------------------------------------------------------------ inference
    def run(self, token_ids: np.ndarray, domain_vector: np.ndarray, domain_position: np.ndarray,
            batch_size: int = 64) -> np.ndarray:
        """The graph on prepared inputs, ``batch_size`` rows per call -> float32 ``[N, D]``."""
        outs = []
        for s in range(0, token_ids.shape[0], max(1, int(batch_size))):
            feed = dict(zip(self.input_names, (
                np.ascontiguousarray(token_ids[s:s + batch_size], np.int64),
                np.ascontiguousarray(domain_vector[s:s + batch_size], np.float32),
                np.ascontiguousarray(domain_position[s:s + batch_size], np.int64))))
            outs.append(self.session.run([self.output_name], feed)[0])
        if not outs:
            return np.zeros((0, int(self.session.get_outputs()[0].shape[1])), np.float32)
        return np.ascontiguousarray(np.concatenate(outs), dtype=np.float32)

    def combine(self, rows: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
        """Average the rows of each text in the head's space (module docstring); one row per text stays as is."""
        if rows.shape[0] == n:
            return rows
        x = rows.astype(np.float64)
        if self.output_space == "ball" and self.curvature:
            sc = np.sqrt(self.curvature)
            r = np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-15)
            x = np.arctanh(np.clip(sc * r, 0, 1 - 1e-7)) * x / (sc * r)  # logmap0
        out = np.zeros((n, x.shape[1]))
        np.add.at(out, owner, x)
        out /= np.bincount(owner, minlength=n)[:, None]
        if self.output_space in ("ball_l2", "clip_l2"):
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-15)
        elif self.output_space == "ball" and self.curvature:
            sc = np.sqrt(self.curvature)
            r = np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-15)
            out = np.tanh(sc * r) * out / (sc * r)  # expmap0
        return out.astype(np.float32)

    def embed(self, texts: Iterable[str], template: str | None = None, batch_size: int = 64) -> np.ndarray:
        """Texts -> float32 ``[N, D]`` in the images' space, one row per text (``template``: module docstring)."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        ids, dv, pos, owner = self.prompt_inputs(texts, template)
        return self.combine(self.run(ids, dv, pos, batch_size), owner, len(texts))
