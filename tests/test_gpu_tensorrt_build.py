"""``build_engine``'s precision pinning and version guard, driven through a stand-in ``tensorrt`` module.

No TensorRT exists here (it needs a GPU and a gigabyte of wheels), so the module is replaced by a recorder
whose ``OnnxParser`` does what TensorRT's parser does to names: each ONNX node becomes one or more layers and
only the last keeps the node's output name; the others write ``(Unnamed Layer* k) [..]_output`` tensors, and
initializers become constant layers. The reference for which layers must stay float32 is the ONNX graph's own
tail (:func:`tki_sdk.export.onnx_export.tail_nodes`) mapped through that expansion, computed independently here.
"""
from __future__ import annotations

import sys
import types

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tki_sdk.export import tensorrt as trt_build
from tki_sdk.export.onnx_export import tail_nodes


def _graph(path):
    """A visual part (named by module path) and a head tail of named and unnamed nodes, one shared constant."""
    f = np.float32
    inits = [numpy_helper.from_array(np.ones((12, 4), f), "proj"), numpy_helper.from_array(np.ones((4, 4), f), "w_head"),
             numpy_helper.from_array(np.array(0.5, f), "half")]  # "half" read by visual and tail nodes
    nodes = [
        helper.make_node("Flatten", ["pixel_values"], ["/visual/flat_out"], name="/visual/flatten", axis=1),
        helper.make_node("Slice_", ["/visual/flat_out"], ["/visual/s_out"], name="/visual/slice", domain="x"),
        helper.make_node("MatMul", ["/visual/s_out", "proj"], ["/visual/proj_out"], name="/visual/proj"),
        helper.make_node("Mul", ["/visual/proj_out", "half"], ["/visual/feat"], name="/visual/scale"),
        helper.make_node("ReduceL2", ["/visual/feat"], ["n1"], name="", keepdims=1),   # unnamed tail nodes
        helper.make_node("Div", ["/visual/feat", "n1"], ["u"], name=""),
        helper.make_node("MatMul", ["u", "w_head"], ["h"], name="/head/mobius"),
        helper.make_node("Mul", ["h", "half"], ["h2"], name="/head/scale"),
        helper.make_node("Clip", ["h2"], ["embedding"], name="/head/clip"),
    ]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["b", 3, 2, 2])],
                          [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["b", 4])], inits)
    onnx.save(helper.make_model(g), str(path))
    return onnx.load(str(path))


#: layers per ONNX op as the parser emits them (ReduceL2 and Clip expand into several)
EXPANSION = {"ReduceL2": 3, "Clip": 2, "Div": 1, "MatMul": 2}


class _T:
    def __init__(self, name, dtype):
        self.name, self.dtype = name, dtype


class _Layer:
    def __init__(self, inputs, outputs, origin):
        self.inputs, self.outputs, self.origin = inputs, outputs, origin
        self.precision, self.out_types = None, {}

    num_inputs = property(lambda s: len(s.inputs))
    num_outputs = property(lambda s: len(s.outputs))

    def get_input(self, j):
        return self.inputs[j]

    def get_output(self, j):
        return self.outputs[j]

    def set_output_type(self, j, dt):
        self.out_types[j] = dt


def fake_tensorrt(version, record):
    t = types.ModuleType("tensorrt")
    t.__version__ = version
    t.float32, t.float16, t.int32 = "float32", "float16", "int32"
    t.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, lvl=None: None})
    t.MemoryPoolType = types.SimpleNamespace(WORKSPACE="ws")
    t.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)
    flags = types.SimpleNamespace(OBEY_PRECISION_CONSTRAINTS="obey", PREFER_PRECISION_CONSTRAINTS="prefer")
    if int(version.split(".")[0]) < 11:
        flags.FP16 = "fp16"  # TensorRT 11 removed it
    t.BuilderFlag = flags

    class Network:
        def __init__(self):
            self.layers = []

        num_layers = property(lambda s: len(s.layers))

        def get_layer(self, i):
            return self.layers[i]

    class Parser:
        def __init__(self, network, logger):
            self.net, self.num_errors = network, 0

        def parse_from_file(self, path):
            m = onnx.load(path)
            tensors = {"pixel_values": _T("pixel_values", t.float32)}
            for init in m.graph.initializer:
                tensors[init.name] = _T(init.name, t.float32)
                self.net.layers.append(_Layer([], [tensors[init.name]], ("const", init.name)))
            for n in m.graph.node:
                prev = [tensors[i] for i in n.input]
                k = EXPANSION.get(n.op_type, 1)
                for step in range(k):
                    last = step == k - 1
                    name = n.output[0] if last else f"(Unnamed Layer* {len(self.net.layers)}) [{n.op_type}]_output"
                    out = _T(name, t.float32)
                    self.net.layers.append(_Layer(prev, [out], ("node", n.output[0])))
                    prev = [out]
                tensors[n.output[0]] = prev[0]
            record["network"] = self.net
            return True

    class Config:
        def set_memory_pool_limit(self, *a):
            pass

        def set_flag(self, f):
            record.setdefault("flags", []).append(f)

        def add_optimization_profile(self, p):
            pass

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return types.SimpleNamespace(set_shape=lambda *a: None)

        def build_serialized_network(self, network, config):
            return b"plan"

    t.Builder, t.OnnxParser = Builder, Parser
    return t


def _expected_fp32_origins(model):
    """Independent reference: the layers of tail nodes, and constants read only by tail nodes."""
    tail = set(tail_nodes(model))  # (names the unnamed tail nodes tail_<i>_<op> in this copy)
    node_ids = {n.output[0] for n in model.graph.node if n.name in tail}
    readers = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, set()).add(n.name in tail)
    consts = {i.name for i in model.graph.initializer if readers.get(i.name) == {True}}
    return {("node", x) for x in node_ids} | {("const", c) for c in consts}


def test_every_tail_layer_is_pinned_named_or_not(tmp_path, monkeypatch):
    model = _graph(tmp_path / "m.onnx")
    expected = _expected_fp32_origins(onnx.load(str(tmp_path / "m.onnx")))
    record: dict = {}
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt("10.13.3", record))
    # what the export pipeline passes: the ONNX output names of the tail nodes
    tail = set(tail_nodes(model))
    named = {o for n in model.graph.node if n.name in tail for o in n.output}
    info = trt_build.build_engine(tmp_path / "m.onnx", tmp_path / "m.plan", image_size=(2, 2), fp32_tensors=named)
    layers = record["network"].layers
    pinned = {id(la) for la in layers if la.precision == "float32"}
    want = {id(la) for la in layers if la.origin in expected}
    assert pinned == want, sorted(la.origin for la in layers if (id(la) in pinned) != (id(la) in want))
    unnamed = [la for la in layers if la.outputs[0].name.startswith("(Unnamed") and la.precision == "float32"]
    assert len(unnamed) == (EXPANSION["ReduceL2"] - 1) + (EXPANSION["MatMul"] - 1) + (EXPANSION["Clip"] - 1)
    assert all(la.out_types == {0: "float32"} for la in layers if la.precision == "float32")
    assert not any(la.precision for la in layers if la.origin[1].startswith("/visual/") or la.origin[1] in ("half", "proj"))
    assert {("node", "n1"), ("node", "u"), ("node", "embedding"), ("const", "w_head")} <= expected
    assert info["fp32_layers"] == len(pinned) and "fp16" in record["flags"] and "obey" in record["flags"]
    assert (tmp_path / "m.plan").read_bytes() == b"plan"


def test_tensorrt_11_is_refused_in_one_line(tmp_path, monkeypatch):
    _graph(tmp_path / "m.onnx")
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt("11.4.0.106", {}))
    with pytest.raises(trt_build.TensorRTBuildError) as e:
        trt_build.build_engine(tmp_path / "m.onnx", tmp_path / "m.plan", image_size=(2, 2))
    msg = str(e.value)
    assert "\n" not in msg and "TensorRT 11.4.0.106 is not supported" in msg and "tensorrt>=10,<11" in msg
    assert not (tmp_path / "m.plan").exists()


def test_gpu_extra_pins_tensorrt_below_11():
    import tomllib
    from pathlib import Path

    from packaging.requirements import Requirement

    doc = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    reqs = {Requirement(r).name: Requirement(r) for r in doc["project"]["optional-dependencies"]["gpu"]}
    spec = reqs["tensorrt"].specifier
    assert spec.contains("10.13.3") and not spec.contains("11.0.0") and not spec.contains("9.3.0")
