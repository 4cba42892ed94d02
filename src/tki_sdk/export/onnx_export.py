"""ONNX export of the fused model and the graph utilities the other variants share.

``export_onnx`` writes ``model.onnx``: standard ONNX (only the default ``ai.onnx`` domain), a dynamic batch
axis, input ``pixel_values`` float32 ``[N,3,H,W]``, output ``embedding`` float32 ``[N,D]``, checked with
``onnx.checker`` (full check, shape inference included).

Exporter choice (torch 2.14): opset >= 18 uses the ``torch.export``-based exporter (``dynamo=True``): its
graph is plain ONNX with ``LayerNormalization`` and, from opset 20, ``Gelu``, already constant-folded, and
every node carries the module it came from (used to keep the head out of fp16 / int8). That exporter does
not emit opset 17, so ``--opset 17`` uses the TorchScript exporter (``dynamo=False``); both run on the
export-friendly attention of :mod:`.fused` (the TorchScript exporter cannot translate PyTorch's fused
attention kernel at all).

``ort_fused_graph`` derives an onnxruntime-specific fp32 graph (``com.microsoft`` ``MultiHeadAttention``
/ ``Attention`` and ``BiasGelu`` fusions from ``onnxscript.rewriter.ort_fusions``) used only as the source
of the int8 model; ``model.onnx`` itself stays standard.
"""
from __future__ import annotations

import ast
import collections
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
import torch
from onnx import numpy_helper
from onnxscript.optimizer import optimize
from onnxscript.rewriter import rewrite
from onnxscript.rewriter.ort_fusions import _core
from onnxscript.rewriter.ort_fusions.attention import fuse_attention
from onnxscript.rewriter.ort_fusions.bias_gelu import fuse_bias_gelu
from onnxscript.rewriter.ort_fusions.erfgelu import fuse_erfgelu
from onnxscript.rewriter.ort_fusions.gelu import fuse_gelu
from onnxscript.rewriter.ort_fusions.mha import fuse_mha1, fuse_mha2
from onnxscript.rewriter.ort_fusions.mha_bias import fuse_mha_bias
from onnxscript.rewriter.ort_fusions.mha_scale import fuse_mha_scale
from onnxscript.rewriter.ort_fusions.sdpa import fuse_sdpa
from onnxscript.rewriter.ort_fusions.sdpa_via_mha import replace_sdpa_by_mha
from onnxscript.rewriter.rules.common import _gemm_to_matmul_add

from tki_sdk.common.model_metadata import INPUT_NAME, OUTPUT_NAME
from tki_sdk.export.fused import FusedEncoder, export_friendly

__all__ = [
    "DEFAULT_OPSET",
    "MIN_OPSET",
    "MAX_OPSET",
    "STANDARD_DOMAINS",
    "ExportError",
    "GraphInfo",
    "export_onnx",
    "check_onnx",
    "graph_info",
    "load_proto",
    "save_proto",
    "tail_nodes",
    "topo_sort",
    "ort_fused_graph",
]

DEFAULT_OPSET = 18
MIN_OPSET = 17
#: Highest opset accepted (what onnx / onnxruntime here know; the exporter is asked for exactly this).
MAX_OPSET = 21
STANDARD_DOMAINS = frozenset({"", "ai.onnx"})
#: onnx.save refuses protos >= 2 GiB; larger models store their weights in ``<file>.data`` beside them.
_PROTO_LIMIT = (1 << 31) - (1 << 20)



class ExportError(RuntimeError):
    """Export or a graph check failed; the message is one line naming the artifact and the problem."""


@dataclass
class GraphInfo:
    """Summary of an ONNX graph: opsets, domains, node counts, dynamic input/output shapes."""

    opset: int | None
    domains: list[str]
    nonstandard_ops: list[str]
    op_counts: dict[str, int]
    nodes: int
    input_shape: list[Any]
    output_shape: list[Any]
    input_type: str
    output_type: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def standard(self) -> bool:
        return not self.nonstandard_ops

    def to_dict(self) -> dict[str, Any]:
        return {"opset": self.opset, "domains": self.domains, "standard_ops_only": self.standard,
                "nonstandard_ops": self.nonstandard_ops, "nodes": self.nodes,
                "input_shape": self.input_shape, "output_shape": self.output_shape}


# ------------------------------------------------------------------------------------------------ I/O
def load_proto(path: str | os.PathLike) -> onnx.ModelProto:
    """Load a model with its weights (external data, if any, from beside the file)."""
    return onnx.load(str(path), load_external_data=True)


def save_proto(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Save as one self-contained file when it fits in a protobuf (< 2 GiB), else with ``<name>.data``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = path.with_name(path.name + ".data")
    if ext.exists():
        ext.unlink()
    if model.ByteSize() < _PROTO_LIMIT:
        onnx.save(model, str(path))
    else:  # pragma: no cover - only for models above 2 GiB (ViT-bigG and larger)
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=ext.name, size_threshold=1024)
    return path


def _dims(vi: onnx.ValueInfoProto) -> list[Any]:
    return [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else None)
            for d in vi.type.tensor_type.shape.dim]


def graph_info(model: onnx.ModelProto | str | os.PathLike) -> GraphInfo:
    """Opset, domains, op counts, and the first input/output shapes of ``model``."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    g = model.graph
    domains = sorted({n.domain or "" for n in g.node})
    nonstd = sorted({f"{n.domain}::{n.op_type}" for n in g.node if (n.domain or "") not in STANDARD_DOMAINS})
    counts = collections.Counter(n.op_type if (n.domain or "") in STANDARD_DOMAINS else f"{n.domain}::{n.op_type}"
                                 for n in g.node)
    opset = next((o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS), None)
    elem = onnx.helper.tensor_dtype_to_np_dtype
    return GraphInfo(
        opset=opset, domains=domains, nonstandard_ops=nonstd, op_counts=dict(counts), nodes=len(g.node),
        input_shape=_dims(g.input[0]), output_shape=_dims(g.output[0]),
        input_type=str(elem(g.input[0].type.tensor_type.elem_type)),
        output_type=str(elem(g.output[0].type.tensor_type.elem_type)),
    )


def check_onnx(path: str | os.PathLike, *, artifact: str, standard_only: bool = True,
               full_check: bool = True) -> GraphInfo:
    """``onnx.checker`` (full check: shape inference too), then the contract of every artifact:

    input ``pixel_values`` float32 ``[N,3,H,W]`` and output ``embedding`` float32 ``[N,D]`` with a dynamic
    batch axis, and (``standard_only``) no node outside the standard ONNX domain.
    """
    path = Path(path)
    try:
        onnx.checker.check_model(str(path), full_check=full_check)
    except Exception as e:  # noqa: BLE001 - the checker raises several types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"{artifact}: {path.name} fails onnx.checker: {first}") from None
    info = graph_info(path)
    m = onnx.load(str(path), load_external_data=False)
    ins, outs = [i.name for i in m.graph.input], [o.name for o in m.graph.output]
    if ins != [INPUT_NAME] or outs != [OUTPUT_NAME]:
        raise ExportError(f"{artifact}: {path.name} has inputs {ins} / outputs {outs}, expected "
                          f"[{INPUT_NAME!r}] / [{OUTPUT_NAME!r}]")
    if info.input_type != "float32" or info.output_type != "float32":
        raise ExportError(f"{artifact}: {path.name} takes {info.input_type} and returns {info.output_type}; "
                          "every artifact must take and return float32")
    if len(info.input_shape) != 4 or isinstance(info.input_shape[0], int):
        raise ExportError(f"{artifact}: {path.name} input shape {info.input_shape} has no dynamic batch axis")
    if standard_only and not info.standard:
        raise ExportError(f"{artifact}: {path.name} uses non-standard ops {info.nonstandard_ops[:5]}; "
                          "model.onnx must use the standard ONNX domain only")
    return info


# ------------------------------------------------------------------------------------------------ export
def export_onnx(
    model: Any,
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    rewrite: bool = True,
    example_batch: int = 2,
) -> GraphInfo:
    """Export ``FusedEncoder(model)`` to ``path`` (standard ONNX, dynamic batch) and check it.

    ``model`` is a :class:`tki_sdk.TKIModel`. See the module docstring for the exporter used per opset.
    Raises :class:`ExportError` with one line when the exporter fails or the graph is not standard.
    """


    if not MIN_OPSET <= int(opset) <= MAX_OPSET:
        raise ExportError(f"opset {opset} is not supported; use {MIN_OPSET}..{MAX_OPSET} (default {DEFAULT_OPSET})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = model.clip.image_size
    example = torch.randn(max(2, int(example_batch)), 3, int(h), int(w))
    fused = FusedEncoder(model).eval()
    try:
        with torch.no_grad(), export_friendly(model, enabled=rewrite) as n_rewrites, \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if opset >= 18:
                batch = torch.export.Dim("batch", min=1, max=1 << 16)
                prog = torch.onnx.export(
                    fused, (example,), None, dynamo=True, opset_version=int(opset), input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME], dynamic_shapes={"pixel_values": {0: batch}},
                    external_data=False, verbose=False, report=False,
                )
                proto = prog.model_proto
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    f = Path(tmp) / "legacy.onnx"
                    torch.onnx.export(
                        fused, (example,), str(f), dynamo=False, opset_version=int(opset),
                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                        do_constant_folding=True,
                    )
                    proto = load_proto(f)
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 - exporter failures come in many types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"fp32: torch.onnx.export failed at opset {opset} ({type(e).__name__}: {first})") from None
    _name_batch_axis(proto)
    proto.producer_name = "tki-sdk"
    save_proto(proto, path)
    info = check_onnx(path, artifact="fp32", standard_only=True)
    info.extra["rewrites"] = dict(n_rewrites)
    info.extra["exporter"] = "dynamo" if opset >= 18 else "torchscript"
    return info


def _name_batch_axis(model: onnx.ModelProto) -> None:
    """Call the batch axis ``batch`` on input and output (the exporters name it differently)."""
    for vi in (*model.graph.input, *model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            old = dims[0].dim_param
            dims[0].dim_param = "batch"
            if old and old != "batch":
                for v in model.graph.value_info:
                    for d in v.type.tensor_type.shape.dim:
                        if d.dim_param == old:
                            d.dim_param = "batch"


# ------------------------------------------------------------------------------------------------ graph utilities
def _scopes(node: onnx.NodeProto) -> list[str] | None:
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            try:
                v = ast.literal_eval(p.value)
                return [str(s) for s in v]
            except (ValueError, SyntaxError):
                return None
    return None


def _is_visual(node: onnx.NodeProto) -> bool | None:
    """True/False when the node records which module it came from, None when it does not."""
    s = _scopes(node)
    if s is not None:
        return any(x == "model.visual" or x.startswith("model.visual.") for x in s)
    if node.name.startswith("/"):  # the TorchScript exporter names nodes by module path
        return node.name.startswith(("/visual/", "/model/visual/"))
    return None


def tail_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that compute on the CLIP image feature: the head (``expmap0``, Möbius layers) and
    the final L2 normalisation. They stay in float32 in the fp16 model and are not quantised in int8.

    The image feature is the output of the last node (in topological order) that belongs to ``model.visual``;
    the tail is everything downstream of it. Returns [] when the graph does not record module scopes.
    """
    nodes = list(model.graph.node)
    last = None
    for i, n in enumerate(nodes):
        if _is_visual(n):
            last = i
    if last is None:
        return []
    live = set(nodes[last].output)
    tail: list[str] = []
    for n in nodes[last + 1:]:
        if any(i in live for i in n.input):
            live.update(n.output)
            if not n.name:
                n.name = f"tail_{len(tail)}_{n.op_type}"
            tail.append(n.name)
    return tail


def topo_sort(model: onnx.ModelProto) -> onnx.ModelProto:
    """Nodes in topological order (some converters append nodes at the end)."""
    g = model.graph
    produced: dict[str, int] = {}
    for i, n in enumerate(g.node):
        for o in n.output:
            if o:
                produced[o] = i
    known = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    deps = [{produced[x] for x in n.input if x not in known and x in produced} for n in g.node]
    users: dict[int, list[int]] = collections.defaultdict(list)
    for i, d in enumerate(deps):
        for j in d:
            users[j].append(i)
    indeg = [len(d) for d in deps]
    ready = collections.deque(i for i, k in enumerate(indeg) if k == 0)
    order: list[int] = []
    while ready:
        i = ready.popleft()
        order.append(i)
        for u in users[i]:
            indeg[u] -= 1
            if indeg[u] == 0:
                ready.append(u)
    if len(order) != len(g.node):
        raise ExportError("graph has a cycle; cannot order its nodes")
    new = [g.node[i] for i in order]
    del g.node[:]
    g.node.extend(new)
    return model


def _fold_initializer_concats(model: onnx.ModelProto) -> int:
    """Replace ``Concat`` nodes whose inputs are all initializers with one initializer (packed QKV weights)."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    keep, folded = [], 0
    for n in g.node:
        if n.op_type == "Concat" and (n.domain or "") == "" and n.input and all(i in inits for i in n.input):
            axis = next(a.i for a in n.attribute if a.name == "axis")
            arr = np.concatenate([numpy_helper.to_array(inits[i]) for i in n.input], axis=axis)
            t = numpy_helper.from_array(arr, n.output[0])
            g.initializer.append(t)
            inits[t.name] = t
            folded += 1
        else:
            keep.append(n)
    del g.node[:]
    g.node.extend(keep)
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    live = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(live)
    return folded


def ort_fused_graph(src: str | os.PathLike, dst: str | os.PathLike, *, pack_qkv: bool = False) -> dict[str, int]:
    """Write an onnxruntime-specific fp32 copy of ``src`` with transformer fusions; return the fusion counts.

    Fusions (``onnxscript.rewriter.ort_fusions``): erf-GELU + bias -> ``BiasGelu``; the attention subgraph ->
    ``MultiHeadAttention`` (``pack_qkv=True``: ``Attention`` with the packed QKV projection). Residual
    ``Add`` + ``LayerNormalization`` are deliberately *not* fused into ``SkipLayerNormalization``: its CPU
    kernel measured several times slower than the two standard ops here. Node scopes of the head survive
    (the head is not touched), so :func:`tail_nodes` still finds it.
    """

    model = ir.load(str(src))
    counts: dict[str, int] = {}
    rewrite(model, [_gemm_to_matmul_add.gemm_to_matmul_add_rule])
    _core._pre_optimize(model)
    counts["erf_gelu"] = fuse_erfgelu(model)
    counts["sdpa"] = fuse_sdpa(model, apply_shape_inference=True)
    counts["mha"] = fuse_mha1(model) + fuse_mha2(model)
    counts["mha_scale"] = fuse_mha_scale(model)
    if counts["mha"]:
        counts["mha_bias"] = fuse_mha_bias(model)
        if pack_qkv:
            counts["attention"] = fuse_attention(model)
    counts["gelu"] = fuse_gelu(model)
    counts["bias_gelu"] = fuse_bias_gelu(model)
    counts["sdpa_via_mha"] = replace_sdpa_by_mha(model)
    optimize(model)
    rewrite(model, _core.ORT_PATTERN_REWRITE_RULES)
    common_passes.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=1)(model)
    common_passes.RemoveInitializersFromInputsPass()(model)
    proto = ir.to_proto(model)
    _fold_initializer_concats(proto)
    for n in proto.graph.node:
        if n.op_type == "Attention":  # equal q/k/v sizes are the default; the quantiser skips nodes that set it
            for a in list(n.attribute):
                if a.name == "qkv_hidden_sizes" and len(set(a.ints)) == 1:
                    n.attribute.remove(a)
    save_proto(proto, dst)
    return {k: int(v) for k, v in counts.items() if v}
