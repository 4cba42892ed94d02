"""The fused export module: ``pixel_values [N,3,H,W] -> embedding [N,D]`` = ``TKIModel.encode_image``.

:class:`FusedEncoder` is one ``nn.Module`` whose ``forward`` *calls* ``TKIModel.encode_image`` (the visual
encoder, ``expmap0``, the hyperbolic MLP, the L2-normalised retrieval output), so what is exported is the
trained model's own code path, not a re-implementation of it.

Export-friendly attention
-------------------------
``nn.MultiheadAttention`` in eval mode without gradients takes PyTorch's fused "fast path"
(``aten::_native_multi_head_attention``), which the TorchScript ONNX exporter cannot translate, and its
general path traces into a sequence-first layout with about eight ``Transpose`` nodes per block.
:func:`export_friendly` swaps each self-attention module of the visual tower, for the duration of an
export, for :class:`ExportAttention`: the same parameters (shared, not copied) and the same arithmetic,

    [W_q; W_k; W_v] = W_in,  q = x W_q^T + b_q (same for k, v), split into heads (B,S,D)->(B,H,S,d),
    a = softmax(q k^T / sqrt(d)) v  (``F.scaled_dot_product_attention``),  out = merge_heads(a) W_out^T + b_out,

written batch-first with one reshape and transpose per tensor. Only modules whose configuration this formula
covers are swapped (batch-first, packed equal-size q/k/v projection, biases, no ``bias_k``/``bias_v``, no
``add_zero_attn``), and a call with a mask or with distinct query/key/value falls back to the original module.
Exported graphs are validated against the unmodified model (:mod:`.validate`), so the rewrite is checked
on every export.
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tki_sdk.model import TKIModel

__all__ = [
    "FusedEncoder",
    "ExportAttention",
    "export_friendly",
    "load_model",
    "reference_embeddings",
]


class ExportAttention(nn.Module):
    """Self-attention of an ``nn.MultiheadAttention`` (batch-first) as plain matmuls; see module docstring.

    Shares the wrapped module's parameters. ``forward`` has ``nn.MultiheadAttention``'s signature and returns
    ``(output, None)``.
    """

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        self.mha = mha
        self.num_heads = int(mha.num_heads)
        self.head_dim = int(mha.head_dim)
        self.embed_dim = int(mha.embed_dim)
        # Separate q/k/v projections (views of the packed in_proj, as buffers so that each export holds
        # them as plain initializers; the graph then has the (B,S,D)->(B,H,S,d) layout that onnxruntime's
        # attention fusion recognises).
        w_q, w_k, w_v = mha.in_proj_weight.detach().chunk(3, dim=0)
        b_q, b_k, b_v = mha.in_proj_bias.detach().chunk(3, dim=0)
        for name, t in (("w_q", w_q), ("w_k", w_k), ("w_v", w_v), ("b_q", b_q), ("b_k", b_k), ("b_v", b_v)):
            self.register_buffer(name, t, persistent=False)

    @staticmethod
    def supports(mha: nn.Module) -> bool:
        """True when :class:`ExportAttention` computes exactly what ``mha`` computes for self-attention."""
        return (
            isinstance(mha, nn.MultiheadAttention)
            and bool(mha.batch_first)
            and bool(mha._qkv_same_embed_dim)
            and mha.in_proj_weight is not None
            and mha.in_proj_bias is not None
            and mha.bias_k is None
            and mha.bias_v is None
            and not mha.add_zero_attn
            and mha.out_proj.bias is not None
        )

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, None]:
        if (
            key is not query
            or value is not query
            or key_padding_mask is not None
            or attn_mask is not None
            or is_causal
            or query.dim() != 3
        ):
            out, _ = self.mha(query, key, value, key_padding_mask=key_padding_mask, need_weights=False,
                              attn_mask=attn_mask, is_causal=is_causal)
            return out, None
        n, length, _ = query.shape
        h, d = self.num_heads, self.head_dim
        q = F.linear(query, self.w_q, self.b_q).reshape(n, length, h, d).transpose(1, 2)  # [N, H, L, d]
        k = F.linear(query, self.w_k, self.b_k).reshape(n, length, h, d).transpose(1, 2)
        v = F.linear(query, self.w_v, self.b_v).reshape(n, length, h, d).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v
        out = out.transpose(1, 2).reshape(n, length, self.embed_dim)  # [N, L, D]
        return self.mha.out_proj(out), None


@contextlib.contextmanager
def export_friendly(model: TKIModel, enabled: bool = True) -> Iterator[int]:
    """Temporarily swap the visual tower's self-attention modules for :class:`ExportAttention`.

    Yields the number of modules swapped; restores the originals on exit (also on error).
    """
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        if enabled:
            targets = [
                (parent, name, child)
                for parent in list(model.visual.modules())
                for name, child in parent.named_children()
                if ExportAttention.supports(child)
            ]
            for parent, name, child in targets:
                setattr(parent, name, ExportAttention(child))
                swapped.append((parent, name, child))
        yield len(swapped)
    finally:
        for parent, name, child in reversed(swapped):
            setattr(parent, name, child)


class FusedEncoder(nn.Module):
    """``pixel_values`` float32 ``[N,3,H,W]`` -> ``embedding`` float32 ``[N,D]``: ``model.encode_image``."""

    def __init__(self, model: TKIModel) -> None:
        super().__init__()
        self.model = model
        self.eval()

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixel_values)


def load_model(
    checkpoint: str | os.PathLike | None = None,
    head: str = "tki",
    model_name: str | None = None,
    pretrained: str | os.PathLike | None = None,
) -> TKIModel:
    """The model to export: ``TKIModel.from_checkpoint`` (head "tki") or ``TKIModel.vanilla`` (head "none").

    With ``head="none"`` and a checkpoint, the checkpoint's CLIP (name and weights) is used without its head;
    without a checkpoint ``model_name`` is required.
    """
    if head not in ("tki", "none"):
        raise ValueError(f"head must be 'tki' or 'none', got {head!r}")
    if head == "tki":
        if checkpoint is None:
            raise ValueError("--head tki needs --checkpoint (a `tki train` folder); use --head none --model NAME for vanilla CLIP")
        model = TKIModel.from_checkpoint(checkpoint, pretrained=pretrained)
    elif checkpoint is not None and model_name is None:
        trained = TKIModel.from_checkpoint(checkpoint, pretrained=pretrained)
        model = TKIModel(trained.clip, None)
    else:
        if model_name is None:
            raise ValueError("--head none without --checkpoint needs --model NAME (an open_clip architecture)")
        model = TKIModel.vanilla(model_name, pretrained=pretrained)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@torch.no_grad()
def reference_embeddings(model: TKIModel, pixels: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """``model.encode_image`` computed in float64 (a float64 copy of the model): the parity reference."""
    ref = copy.deepcopy(model).double().eval()
    out = []
    x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float64))
    for i in range(0, x.shape[0], batch_size):
        out.append(ref.encode_image(x[i:i + batch_size]).numpy())
    return np.concatenate(out, axis=0)


def describe(model: TKIModel) -> dict[str, Any]:
    """Short description for progress lines: model name, head, embedding dim, input size."""
    h, w = model.clip.image_size
    return {"model_name": model.clip.model_name, "head": "none" if model.head is None else "tki",
            "embedding_dim": model.embedding_dim, "input": [3, int(h), int(w)]}
