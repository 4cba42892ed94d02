"""TensorRT engine (``model.plan``) from the exported ONNX, with the ``tensorrt`` Python API (TensorRT 10 only).

Build: ``Builder`` -> network (explicit batch, the TensorRT 10 default) -> ``OnnxParser.parse_from_file``
(``model.onnx``, fp32) -> ``BuilderConfig`` with ``BuilderFlag.FP16``, a workspace limit, one optimisation
profile for ``pixel_values`` (batch 1 .. ``max_batch``, optimum ``opt_batch``) and a timing cache read from
and written back to ``timing_cache`` -> ``build_serialized_network``.

The head and the final normalisation (the ONNX tail, :func:`.onnx_export.tail_nodes`) stay float32, like the
fp16 ONNX: their ``artanh`` clamps do not exist in float16. The parser turns one ONNX node into one or more
layers and only the last keeps the node's output name, so pinning by name misses the rest; instead
:func:`tail_layers` follows the data flow inside the TensorRT network from the tail's entry tensor (the CLIP
image feature, named by the ONNX graph) and pins every layer downstream of it, named or not, plus the
constant layers (weights) that feed only pinned layers: precision float32, output types float32, and
``OBEY_PRECISION_CONSTRAINTS``.

TensorRT 11 removed weak typing (``BuilderFlag.FP16``, per-layer precision) and onnxruntime's TensorRT provider
links ``libnvinfer.so.10``: the ``gpu`` extra pins ``tensorrt>=10,<11`` and :func:`build_engine` refuses 11+ in
one line. An engine only runs on the GPU model and TensorRT version that built it; ``tki.json`` records both.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from tki_sdk.common.model_metadata import INPUT_NAME
from tki_sdk.export.onnx_export import load_proto, tail_nodes

__all__ = ["tensorrt_available", "TENSORRT_MISSING", "build_engine", "TensorRTBuildError", "tail_layers",
           "tail_entry_tensors", "SUPPORTED_MAJOR"]

#: The TensorRT major version whose builder API (weak typing, per-layer precision) this module uses.
SUPPORTED_MAJOR = 10

TENSORRT_MISSING = (
    "TensorRT is not installed: --tensorrt needs the `tensorrt` package and a CUDA GPU; "
    "install it with `pip install 'tki-sdk[gpu]'` on a machine with CUDA (NVIDIA's index serves the wheel)"
)


class TensorRTBuildError(RuntimeError):
    """The engine could not be built; the message is one line."""


def tensorrt_available() -> str | None:
    """The installed TensorRT version, or None when ``import tensorrt`` fails."""
    try:
        import tensorrt as trt
    except Exception:  # noqa: BLE001 - a broken install counts as missing
        return None
    return str(getattr(trt, "__version__", "unknown"))


def _gpu_name() -> str | None:
    try:
        from cuda.bindings import runtime as cudart  # type: ignore[import-not-found]
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef,import-not-found]
        except ImportError:
            return None
    try:
        err, props = cudart.cudaGetDeviceProperties(0)
        if int(err) != 0:
            return None
        name = props.name
        return name.decode(errors="replace").rstrip("\x00") if isinstance(name, bytes) else str(name)
    except Exception:  # noqa: BLE001 - informational only
        return None


def tail_entry_tensors(onnx_path: str | os.PathLike) -> set[str]:
    """The tensors through which the tail (:func:`.onnx_export.tail_nodes`) reads the rest of the graph: inputs
    of tail nodes produced outside the tail, initializers and ``Constant`` outputs excluded (the image feature)."""
    proto = load_proto(Path(onnx_path))
    tail = set(tail_nodes(proto))
    nodes = [n for n in proto.graph.node if n.name in tail]
    inside = {o for n in nodes for o in n.output}
    consts = {i.name for i in proto.graph.initializer}
    consts |= {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    return {i for n in nodes for i in n.input if i and i not in inside and i not in consts}


def tail_layers(network: Any, entry: set[str], named: set[str] | None = None) -> list[int]:
    """Indices of the network's layers to keep in float32 (see the module docstring).

    A layer is in the tail when it reads a tensor in ``entry`` or one written by a tail layer (layers are
    visited in network order, which is topological), or when one of its outputs is in ``named`` (ONNX tensor
    names of tail nodes). A constant layer (no inputs) is added when every layer reading it is in the tail.
    """
    named = set(named or ())
    live = set(entry)
    tail: set[int] = set()
    readers: dict[str, list[int]] = {}
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    for i, layer in enumerate(layers):
        ins = [layer.get_input(j) for j in range(layer.num_inputs)]
        in_names = [t.name for t in ins if t is not None]
        for n in in_names:
            readers.setdefault(n, []).append(i)
        outs = [layer.get_output(j).name for j in range(layer.num_outputs)]
        if any(n in live for n in in_names) or any(o in named for o in outs):
            tail.add(i)
            live.update(outs)
    for i, layer in enumerate(layers):
        if layer.num_inputs == 0 and i not in tail:
            users = [u for j in range(layer.num_outputs) for u in readers.get(layer.get_output(j).name, [])]
            if users and all(u in tail for u in users):
                tail.add(i)
    return sorted(tail)


def build_engine(
    onnx_path: str | os.PathLike,
    plan_path: str | os.PathLike,
    *,
    image_size: tuple[int, int],
    max_batch: int = 64,
    opt_batch: int | None = None,
    fp16: bool = True,
    fp32_tensors: set[str] | None = None,
    timing_cache: str | os.PathLike | None = None,
    workspace_gib: float = 4.0,
) -> dict[str, Any]:
    """Build ``plan_path`` from ``onnx_path`` (see module docstring); returns build facts for ``tki.json``.

    ``fp32_tensors``: ONNX tensor names whose producing layers must stay float32 (the head); with ``fp16`` the
    whole tail found from the ONNX graph (:func:`tail_layers`) stays float32 as well.
    """
    try:
        import tensorrt as trt
    except Exception:  # noqa: BLE001
        raise TensorRTBuildError(TENSORRT_MISSING) from None
    version = str(getattr(trt, "__version__", "0"))
    try:
        major = int(version.split(".")[0])
    except ValueError:
        major = 0
    if major > SUPPORTED_MAJOR:
        raise TensorRTBuildError(
            f"TensorRT {version} is not supported: it builds strongly typed networks only (no BuilderFlag.FP16) and "
            "onnxruntime's TensorRT provider links libnvinfer.so.10; install TensorRT 10: pip install 'tensorrt>=10,<11'"
        )
    h, w = (int(image_size[0]), int(image_size[1]))
    max_batch = int(max_batch)
    opt = int(opt_batch or min(max_batch, 64))
    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if major < 10:  # pragma: no cover - TensorRT 8/9 need explicit batch asked for; 10 has nothing else
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise TensorRTBuildError(f"TensorRT cannot parse {Path(onnx_path).name}: {errs[0] if errs else 'unknown error'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    pinned = 0
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
        keep = set(fp32_tensors or ())
        try:
            entry = tail_entry_tensors(onnx_path)
        except Exception:  # noqa: BLE001 - a graph without module scopes: the named tensors alone
            entry = set()
        if keep or entry:
            float_types = (trt.float32, trt.float16)
            for i in tail_layers(network, entry, keep):
                layer = network.get_layer(i)
                outs = [layer.get_output(j) for j in range(layer.num_outputs)]
                if all(o.dtype in float_types for o in outs):  # shape / index layers keep their integer types
                    layer.precision = trt.float32
                    for j in range(layer.num_outputs):
                        layer.set_output_type(j, trt.float32)
                    pinned += 1
            if pinned:
                flag = getattr(trt.BuilderFlag, "OBEY_PRECISION_CONSTRAINTS", None) or getattr(
                    trt.BuilderFlag, "PREFER_PRECISION_CONSTRAINTS")
                config.set_flag(flag)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, (1, 3, h, w), (opt, 3, h, w), (max_batch, 3, h, w))
    config.add_optimization_profile(profile)
    cache_path = Path(timing_cache) if timing_cache else None
    cache = None
    if cache_path is not None:
        cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTBuildError(
            f"TensorRT returned no engine for {Path(onnx_path).name} (see the [TRT] lines above; "
            "a lower --max-batch needs less GPU memory)"
        )
    plan = Path(plan_path)
    plan.write_bytes(bytes(serialized))
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache_path.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    return {
        "tensorrt": version,
        "gpu": _gpu_name(),
        "precision": "fp16" if fp16 else "fp32",
        "profile": {"min_batch": 1, "opt_batch": opt, "max_batch": max_batch},
        "fp32_layers": pinned,
        "timing_cache": cache_path.name if cache_path else None,
        "build_seconds": round(time.perf_counter() - t0, 1),
    }
