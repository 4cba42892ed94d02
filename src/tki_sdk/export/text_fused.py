r"""The fused text module: token ids (and an optional domain word vector) -> embedding, as ``TKIModel.encode_text``.

:class:`FusedTextEncoder` takes three inputs (batch axis ``N``, context ``L``, token width ``W``)::

    token_ids        int64   [N, L]   CLIP token ids (<sot> ... <eot>, 0-padded), as open_clip's tokenizer
    domain_vector    float32 [N, W]   a learned domain word vector nu_p, or anything (unused) when
    domain_position  int64   [N]      < 0; else the position whose token embedding nu_p replaces

and computes, with m_j = [j == domain_position] (0 everywhere for a negative position)::

    e_j  = (1 - m_j) E[token_ids_j] + m_j nu          (the embedding lookup of the prompt learner, prompts.py)
    f    = proj(ln_final(T(e + P))[argmax_j token_ids_j])   (CLIP's text tower, end-of-text pooling)
    embedding = f/||f||                 head "none"
              = h.embed(f)              head "tki", embedding "cosine"  (unit vector in the head's space)
              = h(f)                    head "tki", embedding "ball"    (raw head output)

which is exactly ``TKIModel.encode_text`` for a negative position (the same CLIP modules and head, called
the same way), and the TKI prompt ``a [DOMAIN]_p style of [QUERY].`` of the training stage for
``domain_position = 2`` (after <sot> and "a"). One graph serves the raw query, a template and the ensemble.

The head h runs in float64 (``f`` cast up, the output cast back to ``f``'s type). Text features land near
the ball's boundary, where the Möbius maps of h are ill-conditioned: with ``sqrt(c) ||h(f)||`` at the clamp
``1 - 1e-5``, h in float32 on a float64-exact ``f`` gives directions at cosine 0.99903 of the float64 ones
(a random-init ViT-B-32 with a trained head, on the domain prompts), below the fp32 parity threshold; in
float64 the artifact matches to 1e-9. h is two 512 x 512 layers: its cost is nothing beside the tower's.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tki_sdk.train.model import TKIModel
from tki_sdk.train.prompts import TextTower

__all__ = ["FusedTextEncoder", "text_reference"]


class FusedTextEncoder(nn.Module):
    """See the module docstring. Shares the model's CLIP modules; the head is a float64 copy."""

    def __init__(self, model: TKIModel) -> None:
        super().__init__()
        self.model = model
        self.tower = TextTower(model.clip.model)
        self.head64 = None if model.head is None else copy.deepcopy(model.head).double()
        self.eval()

    @property
    def context_length(self) -> int:
        return self.tower.context_length

    @property
    def token_width(self) -> int:
        return int(self.tower.token_embedding.weight.shape[1])

    def forward(self, token_ids: torch.Tensor, domain_vector: torch.Tensor,
                domain_position: torch.Tensor) -> torch.Tensor:
        emb = self.tower.token_embedding(token_ids)
        positions = torch.arange(token_ids.shape[1], device=token_ids.device)
        m = (positions[None, :] == domain_position[:, None]).to(emb.dtype)[:, :, None]
        emb = emb * (1 - m) + domain_vector[:, None, :].to(emb.dtype) * m
        f = self.tower.encode_embeddings(emb, token_ids.argmax(dim=-1))
        if self.head64 is None:
            return F.normalize(f, dim=-1)
        x = f.double()
        y = self.head64(x) if self.model.embedding == "ball" else self.head64.embed(x)
        return y.to(f.dtype)


@torch.no_grad()
def text_reference(model: TKIModel, token_ids: np.ndarray, domain_vector: np.ndarray, domain_position: np.ndarray,
                   batch_size: int = 64) -> np.ndarray:
    """:class:`FusedTextEncoder` of a float64 copy of ``model``: the parity reference of the text artifact."""
    m = copy.deepcopy(model).double().eval()
    m.clip.model.double()  # the text tower lives in clip.model (TKIModel registers only the visual tower)
    ref = FusedTextEncoder(m)
    out = []
    for s in range(0, token_ids.shape[0], batch_size):
        out.append(ref(torch.from_numpy(np.ascontiguousarray(token_ids[s:s + batch_size], dtype=np.int64)),
                       torch.from_numpy(np.ascontiguousarray(domain_vector[s:s + batch_size], dtype=np.float64)),
                       torch.from_numpy(np.ascontiguousarray(domain_position[s:s + batch_size], dtype=np.int64)))
                   .numpy())
    return np.concatenate(out) if out else np.zeros((0, model.embedding_dim))
