"""fp16 and int8 variants of the exported model.

fp16 (``model.fp16.onnx``)
    ``onnxruntime.transformers.float16.convert_float_to_float16`` with ``keep_io_types=True``: float16
    weights and compute, float32 ``pixel_values`` in and ``embedding`` out, so the runtime feeds every
    precision the same tensor. The tail (``expmap0``, the Möbius layers, the final normalisation; see
    :func:`.onnx_export.tail_nodes`) stays float32: its clamps (``1 - 1e-7`` before ``artanh``, ``1e-15``
    norm floors) are not representable in float16. Standard ONNX ops only.

int8 (``model.int8.onnx``), two schemes, both on the onnxruntime-fused fp32 graph
(:func:`.onnx_export.ort_fused_graph`; the head is left in float32 in both):

- ``dynamic``: ``quantize_dynamic``: int8 weights (per output channel or per tensor), activations quantised
  per batch at run time (``DynamicQuantizeMatMul``: one scale and zero point for the whole batch tensor); no
  calibration data needed. **Batch-dependent**: an image's vector changes with the other images of its
  batch (the tiny test model: cosine 0.99993 between alone and in a batch), so it is recorded
  ``batch_invariant: false`` and the runtime runs it only when asked for by name.
- ``static_qdq``: ``quantize_static`` in QDQ format: int8 weights per output channel (symmetric), uint8
  activations with ranges calibrated (MinMax) on real images through the model's preprocessing. Fixed
  scales: batch-invariant (``batch_invariant: true``).

Only ``MatMul`` nodes with constant weights are quantised (``MatMulConstBOnly``): the attention products,
Softmax, LayerNorm and the head stay float. :func:`.pipeline.run_export` measures each candidate's parity
and speed and ships the fastest that meets the int8 threshold.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tki_sdk.export.onnx_export import ExportError, check_onnx, load_proto, save_proto, tail_nodes, topo_sort

__all__ = ["convert_fp16", "head_nodes", "quantize_int8_dynamic", "quantize_int8_static", "INT8_SCHEMES"]

INT8_SCHEMES = ("dynamic", "static_qdq")


class _quiet:
    """Silence onnxruntime.quantization's logging (it logs every node) inside a ``with`` block."""

    def __enter__(self) -> None:
        self._level = logging.root.manager.disable
        logging.disable(logging.WARNING)

    def __exit__(self, *exc: Any) -> None:
        logging.disable(self._level)


def head_nodes(model: Any, head: str | None, artifact: str) -> list[str]:
    """:func:`.onnx_export.tail_nodes` of ``model`` (an ONNX proto), which stay float32. For a model whose head is
    ``"tki"`` an empty list means the graph lost its module scopes, and the head would be converted / quantised
    silently: raise :class:`ExportError` instead."""
    keep = tail_nodes(model)
    if not keep and head == "tki":
        raise ExportError(f"{artifact}: no head nodes found in the ONNX graph (no node downstream of model.visual), "
                          "so the TKI head would not stay float32; re-export model.onnx with tki-export (default opset)")
    return keep


def convert_fp16(src: str | os.PathLike, dst: str | os.PathLike, *, head: str | None = None) -> dict[str, Any]:
    """Write the fp16 variant of ``src`` to ``dst`` (see module docstring); returns what was kept in fp32.
    ``head="tki"``: raise :class:`ExportError` when the graph shows no head nodes to keep in float32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = load_proto(src)
    keep = head_nodes(model, head, "fp16")
    with _quiet():
        m16 = convert_float_to_float16(model, keep_io_types=True, node_block_list=keep or None)
    topo_sort(m16)
    del m16.graph.value_info[:]  # stale float32 annotations of converted tensors; the checker re-infers them
    m16.producer_name = "tki-sdk"
    save_proto(m16, dst)
    check_onnx(dst, artifact="fp16", standard_only=True)
    return {"fp32_nodes": len(keep), "keep_io_types": True}


def _exclusions(src: str | os.PathLike, head: str | None) -> list[str]:
    return head_nodes(load_proto(src), head, "int8")


#: Quantise weights to 7 bits (``reduce_range``). x86 CPUs without VNNI run onnxruntime's U8S8 products with
#: ``VPMADDUBSW``, whose int16 sums saturate with full 8-bit weights: on such a CPU (AVX2 only) a tiny ViT's
#: int8 export fell to min cosine 0.96-0.98 against torch, and 0.9998 with 7-bit weights. The export runs
#: wherever it is deployed, so 7-bit weights are the default on every machine.
REDUCE_RANGE = True


def quantize_int8_dynamic(src: str | os.PathLike, dst: str | os.PathLike, *, per_channel: bool = False,
                          head: str | None = None, reduce_range: bool = REDUCE_RANGE) -> dict[str, Any]:
    """Dynamic int8 quantisation of ``src`` (an fp32 graph) into ``dst``; ``head`` as in :func:`convert_fp16`;
    ``reduce_range``: 7-bit weights (:data:`REDUCE_RANGE`)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    exclude = _exclusions(src, head)
    with _quiet():
        quantize_dynamic(
            str(src), str(dst), op_types_to_quantize=["MatMul", "Attention"], per_channel=per_channel,
            reduce_range=reduce_range, weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
            extra_options={"MatMulConstBOnly": True},
        )
    _finish(dst)
    return {"scheme": "dynamic", "weights": _weights(per_channel, reduce_range),
            "activations": "uint8, per batch at run time", "excluded_nodes": len(exclude),
            "reduce_range": bool(reduce_range), "batch_invariant": False}


def _weights(per_channel: bool, reduce_range: bool) -> str:
    return ("int8" + (" (7-bit range)" if reduce_range else "")
            + (" per-channel" if per_channel else " per-tensor"))


class _Reader:
    """``CalibrationDataReader`` over a pixel array, in batches; ``set_range`` selects batches, so onnxruntime
    merges the ranges batch by batch (``CalibStridedMinMax``) instead of holding every activation at once."""

    def __init__(self, pixels: np.ndarray, input_name: str, batch_size: int = 8) -> None:
        self._pixels = pixels
        self._name = input_name
        self._bs = batch_size
        self._n = -(-pixels.shape[0] // batch_size)
        self._range = (0, self._n)
        self._it: Iterator[dict[str, np.ndarray]] | None = None

    def __len__(self) -> int:
        return self._n

    def set_range(self, start_index: int, end_index: int) -> None:
        self._range = (int(start_index), int(end_index))
        self._it = None

    def _gen(self) -> Iterator[dict[str, np.ndarray]]:
        for b in range(*self._range):
            x = self._pixels[b * self._bs:(b + 1) * self._bs]
            yield {self._name: np.ascontiguousarray(x, dtype=np.float32)}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = self._gen()
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None


def quantize_int8_static(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    calib_pixels: np.ndarray,
    *,
    per_channel: bool = True,
    input_name: str = "pixel_values",
    head: str | None = None,
    reduce_range: bool = REDUCE_RANGE,
    activations: str = "uint8",
) -> dict[str, Any]:
    """Static QDQ int8 quantisation of ``src`` into ``dst``, calibrated (MinMax) on ``calib_pixels``; ``head`` as
    in :func:`convert_fp16`; ``reduce_range``: 7-bit weights (:data:`REDUCE_RANGE`); ``activations``: ``uint8``
    (U8S8 products, the default) or ``int8`` (S8S8)."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    if calib_pixels is None or len(calib_pixels) == 0:
        raise ExportError("int8 static_qdq: no calibration images")

    class Reader(_Reader, CalibrationDataReader):
        pass

    exclude = _exclusions(src, head)
    with _quiet():
        quantize_static(
            str(src), str(dst), Reader(calib_pixels, input_name), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul"], per_channel=per_channel, reduce_range=reduce_range,
            activation_type=QuantType.QInt8 if activations == "int8" else QuantType.QUInt8,
            weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"MatMulConstBOnly": True, "WeightSymmetric": True, "ActivationSymmetric": False,
                           "CalibStridedMinMax": 1},
        )
    _finish(dst)
    return {"scheme": "static_qdq", "weights": _weights(per_channel, reduce_range),
            "activations": f"{'int8' if activations == 'int8' else 'uint8'}, ranges calibrated (MinMax)",
            "calibration_images": int(len(calib_pixels)),
            "excluded_nodes": len(exclude), "reduce_range": bool(reduce_range), "batch_invariant": True}


def _finish(dst: str | os.PathLike) -> None:
    m = load_proto(dst)
    topo_sort(m)
    m.producer_name = "tki-sdk"
    save_proto(m, dst)
    check_onnx(dst, artifact="int8", standard_only=False)
    for extra in Path(dst).parent.glob(Path(dst).stem + "*-inferred.onnx"):
        extra.unlink(missing_ok=True)
