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
``add_zero_attn``), and a call with a mask or with distinct key/value falls back to the original module.

Two more exact rewrites, each applied only where its conditions hold: the patch-embedding convolution as one
matrix product over flattened patches (:class:`PatchEmbedMatMul`; int8 then covers it), and, for ViTs whose
embedding is the class token, a last block that computes only the class token's row
(:class:`ClsOnlyLastBlock`; the other rows are discarded by pooling, so the MLP and output projection of the
last block run on one token instead of all). Exported graphs are validated against the unmodified model
(:mod:`.validate`), so the rewrites are checked on every export.
"""
from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tki_sdk.train.model import TKIModel

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
            value is not key
            or key_padding_mask is not None
            or attn_mask is not None
            or is_causal
            or query.dim() != 3
            or key.dim() != 3
        ):
            out, _ = self.mha(query, key, value, key_padding_mask=key_padding_mask, need_weights=False,
                              attn_mask=attn_mask, is_causal=is_causal)
            return out, None
        n, length, _ = query.shape
        kv_len = key.shape[1]
        h, d = self.num_heads, self.head_dim
        q = F.linear(query, self.w_q, self.b_q).reshape(n, length, h, d).transpose(1, 2)  # [N, H, L, d]
        k = F.linear(key, self.w_k, self.b_k).reshape(n, kv_len, h, d).transpose(1, 2)  # [N, H, S, d]
        v = F.linear(key, self.w_v, self.b_v).reshape(n, kv_len, h, d).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v
        out = out.transpose(1, 2).reshape(n, length, self.embed_dim)  # [N, L, D]
        return self.mha.out_proj(out), None


class PatchEmbedMatMul(nn.Module):
    """A patch-embedding ``Conv2d`` (kernel = stride = p, no padding, no dilation, one group) as one matrix
    product over flattened patches, returning the conv's ``[N, C, H/p, W/p]``:

        patches[n, (i, j), (c, u, v)] = x[n, c, i p + u, j p + v],   y = patches W^T (+ b)

    with ``W = conv.weight.reshape(C, 3 p p)``. Identical sums; a ``MatMul`` that int8 quantisation covers,
    where onnxruntime does not quantise the ``Conv``."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv
        self.p = int(conv.kernel_size[0])
        self.register_buffer("w_t", conv.weight.detach().reshape(conv.out_channels, -1).t().contiguous(),
                             persistent=False)

    @staticmethod
    def supports(conv: nn.Module) -> bool:
        return (
            isinstance(conv, nn.Conv2d)
            and conv.kernel_size[0] == conv.kernel_size[1] == conv.stride[0] == conv.stride[1]
            and tuple(conv.padding) == (0, 0) and tuple(conv.dilation) == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, hh, ww = x.shape
        p = self.p
        if hh % p or ww % p:
            return self.conv(x)
        gh, gw = hh // p, ww // p
        patches = x.reshape(n, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(n, gh * gw, c * p * p)
        y = torch.matmul(patches, self.w_t)
        if self.conv.bias is not None:
            y = y + self.conv.bias
        return y.transpose(1, 2).reshape(n, -1, gh, gw)


class ClsOnlyLastBlock(nn.Module):
    """The last residual attention block of a ViT whose output is only its class token (``pool_type
    'tok'``): the class token attends to all tokens as before, and only its row goes through the residual,
    the MLP and the output projection -- the other rows would be discarded by pooling. Returns ``[N, 1, D]``.

        h = ln_1(x);  t = x[:, :1] + ls_1(attn(h[:, :1], h, h));  out = t + ls_2(mlp(ln_2(t)))
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    @staticmethod
    def supports(visual: nn.Module) -> bool:
        try:
            blocks = visual.transformer.resblocks
            last = blocks[-1]
        except (AttributeError, IndexError, TypeError):
            return False
        return (
            getattr(visual, "attn_pool", None) is None
            and getattr(visual, "pool_type", None) == "tok"
            and not getattr(visual, "output_tokens", False)
            and bool(getattr(visual.transformer, "batch_first", False))
            and all(hasattr(last, a) for a in ("ln_1", "attn", "ls_1", "ln_2", "mlp", "ls_2"))
            and not hasattr(last, "ln_1_kv")
            and isinstance(last.attn, (nn.MultiheadAttention, ExportAttention))
        )

    def forward(self, q_x: torch.Tensor, k_x: torch.Tensor | None = None, v_x: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        b = self.block
        if k_x is not None or v_x is not None or attn_mask is not None:
            return b(q_x, k_x, v_x, attn_mask=attn_mask)
        h = b.ln_1(q_x)
        hq = h[:, :1]
        t = q_x[:, :1] + b.ls_1(b.attn(hq, h, h, need_weights=False)[0])
        return t + b.ls_2(b.mlp(b.ln_2(t)))


@contextlib.contextmanager
def export_friendly(model: TKIModel, enabled: bool = True, *, cls_only: bool = True,
                    patch_matmul: bool = True) -> Iterator[dict[str, int]]:
    """Temporarily swap modules of the visual tower for export-friendly equivalents: self-attention ->
    :class:`ExportAttention`, the patch-embedding conv -> :class:`PatchEmbedMatMul` (``patch_matmul``), the
    last block -> :class:`ClsOnlyLastBlock` (``cls_only``, where the pooled output is the class token).

    Yields counts of what was swapped; restores the originals on exit (also on error).
    """
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    counts = {"attention": 0, "patch_embed": 0, "cls_only_last_block": 0}
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
            counts["attention"] = len(targets)
            visual = model.visual
            if patch_matmul and PatchEmbedMatMul.supports(getattr(visual, "conv1", None)):
                swapped.append((visual, "conv1", visual.conv1))
                visual.conv1 = PatchEmbedMatMul(visual.conv1)
                counts["patch_embed"] = 1
            if cls_only and ClsOnlyLastBlock.supports(visual):
                blocks = visual.transformer.resblocks
                idx = str(len(blocks) - 1)
                swapped.append((blocks, idx, blocks[-1]))
                blocks[-1] = ClsOnlyLastBlock(blocks[-1])
                counts["cls_only_last_block"] = 1
        yield counts
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
