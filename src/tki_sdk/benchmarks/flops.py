"""Arithmetic per image of an ONNX graph, for "fraction of peak" in the throughput suite.

Shapes come from ``onnx.shape_inference`` with the batch axis set to 1. Counted, as 2 operations per
multiply-add: ``MatMul`` / ``Gemm`` (``2 * prod(output) * K``) and ``Conv`` (``2 * prod(output) * C_in/groups
* prod(kernel)``). Element-wise ops, Softmax and normalisations are left out (a few percent of a ViT). The
products split into ``weights`` (one input is a constant: what int8 quantisation turns into int8 products)
and ``activations`` (both inputs computed: the attention scores and their weighted sum, which stay float).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["graph_flops"]


def graph_flops(path: str | os.PathLike) -> dict[str, Any]:
    """``{"gflop_per_image", "weight_gflop", "activation_gflop", "counted_nodes", "uncounted_products"}``
    of the fp32 graph at ``path`` (see the module docstring)."""
    import onnx
    from onnx import shape_inference

    m = onnx.load(str(path), load_external_data=True)
    for vi in list(m.graph.input) + list(m.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].ClearField("dim_param")
            dims[0].dim_value = 1
    del m.graph.value_info[:]
    m = shape_inference.infer_shapes(m, data_prop=True)
    shapes: dict[str, list[int]] = {}
    for vi in list(m.graph.input) + list(m.graph.output) + list(m.graph.value_info):
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = [d.dim_value for d in dims]
    consts = {i.name for i in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "Constant":
            consts.update(n.output)
    for i in m.graph.initializer:
        shapes[i.name] = list(i.dims)
    weight = act = 0.0
    counted = uncounted = 0
    for n in m.graph.node:
        if n.op_type not in ("MatMul", "Gemm", "Conv"):
            continue
        out = shapes.get(n.output[0])
        a = shapes.get(n.input[0])
        b = shapes.get(n.input[1]) if len(n.input) > 1 else None
        if out is None or a is None or b is None:
            uncounted += 1
            continue
        if n.op_type == "Conv":
            flops = 2.0 * float(np.prod(out)) * float(np.prod(b[1:]))
        elif n.op_type == "Gemm":
            trans_a = next((at.i for at in n.attribute if at.name == "transA"), 0)
            flops = 2.0 * float(np.prod(out)) * (a[0] if trans_a else a[-1])
        else:
            flops = 2.0 * float(np.prod(out)) * a[-1]
        counted += 1
        if n.input[1] in consts or n.input[0] in consts:
            weight += flops
        else:
            act += flops
    return {"gflop_per_image": (weight + act) / 1e9, "weight_gflop": weight / 1e9, "activation_gflop": act / 1e9,
            "counted_nodes": counted, "uncounted_products": uncounted,
            "method": "2 x multiply-adds of MatMul/Gemm/Conv from ONNX shape inference at batch 1"}
