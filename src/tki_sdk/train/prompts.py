r"""Prompt-based domain expansion (paper section 4.1): learnable domain word vectors in CLIP's text encoder.

P learnable word vectors :math:`\nu_p` (CLIP's token-embedding width) replace a ``[DOMAIN]`` placeholder
token during the embedding lookup. Three prompt families go through CLIP's frozen text transformer, each
with its own end-of-text pooling and projection:

- :math:`t_{pi}` = T("a [DOMAIN]_p style of [CLASS]_i.")
- :math:`t^d_p` = T("a [DOMAIN]_p style of")
- :math:`t^c_i` = T("[CLASS]_i")

Class names may span several BPE tokens. Initialisation of :math:`\nu`: N(0, 0.02²), the scale of CLIP's
own token embeddings (open_clip initialises ``token_embedding`` with std 0.02) and CoOp's choice for
learnable context vectors, so the vectors start as plausible, style-neutral "words".

Speed: CLIP's text transformer is causal and pools at the end-of-text token, so positions after the last
end-of-text token cannot influence any pooled feature. The transformer therefore runs on the shortest
context that holds the longest prompt (about 10 tokens instead of 77), the causal mask and positional
embedding cut to that length; ``full_context=True`` runs the usual 77 tokens (same result to float error).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from tki_sdk.train.clip import LoadedClip

DOMAIN_PREFIX = "a"
DOMAIN_SUFFIX = "style of"
CLASS_SUFFIX = "."
NU_INIT_STD = 0.02


class TextTower:
    """The parts of an open_clip text encoder the prompts run through (built-in CLIP or TextTransformer)."""

    def __init__(self, model: nn.Module) -> None:
        text = model.text if hasattr(model, "text") else model
        for attr in ("token_embedding", "positional_embedding", "transformer", "ln_final"):
            if not hasattr(text, attr):
                raise ValueError(
                    "this CLIP's text encoder is not open_clip's causal text transformer (no "
                    f"{attr}); TKI needs a CLIP-style text tower (e.g. ViT-B-32, RN50, ViT-L-14)"
                )
        pool = getattr(text, "text_pool_type", getattr(text, "pool_type", "argmax"))
        if pool not in ("argmax", "eos"):
            raise ValueError(f"text pooling {pool!r} is not end-of-text pooling; TKI needs argmax/eos pooling")
        if getattr(text, "attn_mask", None) is None:
            raise ValueError("this CLIP's text encoder has no causal mask; TKI needs a causal text transformer")
        self.text = text

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.text.token_embedding

    @property
    def context_length(self) -> int:
        return int(self.text.positional_embedding.shape[0])

    def encode_embeddings(self, emb: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        """Text features of token embeddings ``emb [B, L, W]`` pooled at ``eot_index [B]`` (L ≤ context)."""
        t = self.text
        length = emb.shape[1]
        cast = t.transformer.get_cast_dtype() if hasattr(t.transformer, "get_cast_dtype") else emb.dtype
        x = emb.to(cast) + t.positional_embedding[:length].to(cast)
        x = t.transformer(x, attn_mask=t.attn_mask[:length, :length])
        x = t.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot_index]
        proj = t.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        return x


class PromptBank(nn.Module):
    """Token ids of the three prompt families for a class list, and the learnable domain vectors ν."""

    def __init__(
        self,
        clip: LoadedClip,
        classes: Sequence[str],
        n_domains: int = 20,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not classes:
            raise ValueError("the class list is empty; give at least one class name")
        if n_domains < 2:
            raise ValueError(f"need at least 2 domain word vectors (P >= 2), got {n_domains}")
        self.classes = [str(c) for c in classes]
        self.tower = TextTower(clip.model)
        tok = clip.tokenizer
        if not hasattr(tok, "encode") or not hasattr(tok, "eot_token_id"):
            raise ValueError(f"{clip.model_name}'s tokenizer is not CLIP's BPE tokenizer; TKI needs it")
        self.sot, self.eot = int(tok.sot_token_id), int(tok.eot_token_id)
        prefix, suffix, dot = tok.encode(DOMAIN_PREFIX), tok.encode(DOMAIN_SUFFIX), tok.encode(CLASS_SUFFIX)
        placeholder = tok.encode("x")[0]
        class_ids = []
        for c in self.classes:
            ids = tok.encode(c.replace("_", " "))
            if not ids:
                raise ValueError(f"class name {c!r} has no tokens; give a non-empty name")
            class_ids.append(ids)
        self.domain_pos = 1 + len(prefix)  # where ν_p goes: after <sot> and "a"
        head = [self.sot, *prefix, placeholder, *suffix]
        full = [head + ids + dot + [self.eot] for ids in class_ids]  # "a [D] style of [CLASS]."
        dom = head + [self.eot]  # "a [D] style of"
        cls = [[self.sot, *ids, self.eot] for ids in class_ids]  # "[CLASS]"
        longest = max(len(s) for s in [*full, dom, *cls])
        if longest > self.tower.context_length:
            bad = self.classes[max(range(len(full)), key=lambda i: len(full[i]))]
            raise ValueError(
                f"the prompt for class {bad!r} needs {longest} tokens, more than CLIP's context "
                f"({self.tower.context_length}); shorten the class name"
            )
        self.short_length = longest
        self._register("full_ids", "full_eot", full)
        self._register("dom_ids", "dom_eot", [dom])
        self._register("cls_ids", "cls_eot", cls)
        width = self.tower.token_embedding.weight.shape[1]
        nu = torch.randn(n_domains, width, generator=generator) * NU_INIT_STD
        self.domain_vectors = nn.Parameter(nu.to(self.tower.token_embedding.weight.dtype))

    def _register(self, ids_name: str, eot_name: str, seqs: list[list[int]]) -> None:
        length = self.tower.context_length
        ids = torch.zeros(len(seqs), length, dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, : len(s)] = torch.tensor(s)
        self.register_buffer(ids_name, ids, persistent=False)
        self.register_buffer(eot_name, torch.tensor([len(s) - 1 for s in seqs]), persistent=False)

    @property
    def n_domains(self) -> int:
        return int(self.domain_vectors.shape[0])

    def _length(self, full_context: bool) -> int:
        return self.tower.context_length if full_context else self.short_length

    def _encode(self, ids: torch.Tensor, eot: torch.Tensor, nu: torch.Tensor | None, full_context: bool):
        """Encode ``ids [B, L]``; with ``nu [B, W]``, position ``domain_pos`` takes ν instead of its token."""
        ids = ids[:, : self._length(full_context)]
        emb = self.tower.token_embedding(ids)
        if nu is not None:
            pos = torch.zeros(ids.shape[1], dtype=emb.dtype, device=emb.device)
            pos[self.domain_pos] = 1
            emb = emb * (1 - pos)[None, :, None] + nu[:, None, :].to(emb.dtype) * pos[None, :, None]
        return self.tower.encode_embeddings(emb, eot)

    def class_features(self, classes: torch.Tensor | None = None, full_context: bool = False) -> torch.Tensor:
        """:math:`t^c_i` ``[C, D]`` for all classes or the given class indices (no ν involved)."""
        idx = torch.arange(len(self.classes), device=self.cls_ids.device) if classes is None else classes
        return self._encode(self.cls_ids[idx], self.cls_eot[idx], None, full_context)

    def domain_features(self, full_context: bool = False) -> torch.Tensor:
        """:math:`t^d_p` ``[P, D]``."""
        p = self.n_domains
        return self._encode(
            self.dom_ids.expand(p, -1), self.dom_eot.expand(p), self.domain_vectors, full_context
        )

    def prompt_features(
        self, classes: torch.Tensor | None = None, full_context: bool = False, chunk: int | None = None
    ) -> torch.Tensor:
        """:math:`t_{pi}` ``[P, C, D]`` for all classes or the given class indices.

        ``chunk`` bounds how many prompts go through the transformer at once (memory for many classes).
        """
        idx = torch.arange(len(self.classes), device=self.full_ids.device) if classes is None else classes
        p, c = self.n_domains, int(idx.numel())
        ids = self.full_ids[idx].repeat(p, 1)  # row r = (p, i) with p = r // c
        eot = self.full_eot[idx].repeat(p)
        nu = self.domain_vectors.repeat_interleave(c, dim=0)
        if chunk is None or chunk >= ids.shape[0]:
            out = self._encode(ids, eot, nu, full_context)
        else:
            out = torch.cat(
                [
                    self._encode(ids[s : s + chunk], eot[s : s + chunk], nu[s : s + chunk], full_context)
                    for s in range(0, ids.shape[0], chunk)
                ]
            )
        return out.reshape(p, c, -1)
