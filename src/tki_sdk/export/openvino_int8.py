"""The OpenVINO int8 artifact (``model.ov.int8.onnx``): NNCF post-training quantisation of ``model.onnx``.

``nncf.quantize`` on the standard fp32 ONNX graph (not onnxruntime's fused one: OpenVINO fuses for itself),
``model_type=TRANSFORMER`` (Softmax, LayerNorm, GELU and the attention score products stay float; NNCF's
SmoothQuant moves activation outliers into the weights), MinMax ranges plus fast bias correction from the
export's calibration images (the real images ``tki-export`` already preprocessed with the model's own
transform), per-channel symmetric int8 weights and asymmetric uint8 activations (NNCF's ``MIXED`` preset).
The TKI head (``expmap0``, Möbius layers, normalisation; :func:`.quantize.head_nodes`) is an ignored scope and
stays float32. The result is an ONNX graph with QuantizeLinear / DequantizeLinear pairs, which OpenVINO
runs on its int8 kernels (:class:`tki_sdk.runtime.engine.openvino_runner.OpenVINORunner`).

Weights are kept to 7 bits in every layer (NNCF ``OverflowFix.ENABLE``; NNCF's default does it in the first
layer only): x86 CPUs without VNNI multiply uint8 x int8 with ``VPMADDUBSW``, whose int16 sums saturate with
full 8-bit weights, the problem ``reduce_range`` solves for the onnxruntime int8 artifact. Measured on an
AVX2-only AMD EPYC, tiny test ViT: min cosine vs torch 0.983 with the default, 0.998 with every layer fixed
(disabling SmoothQuant as well gave 0.9994 there; it stays on, since real CLIP weights have the activation
outliers it exists for). The artifact runs wherever it is deployed, so the fix applies on every machine.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from tki_sdk.export.onnx_export import ExportError, check_onnx, load_proto, save_proto
from tki_sdk.export.quantize import head_nodes

__all__ = ["quantize_openvino_int8", "openvino_export_available", "OPENVINO_EXPORT_MISSING"]

OPENVINO_EXPORT_MISSING = ("tki-export --openvino needs openvino and nncf; pip install 'tki-sdk[openvino]'")


def openvino_export_available() -> bool:
    """Both ``openvino`` and ``nncf`` import."""
    try:
        import nncf  # noqa: F401
        import openvino  # noqa: F401
    except Exception:  # noqa: BLE001 - absent or broken
        return False
    return True


def quantize_openvino_int8(src: str | os.PathLike, dst: str | os.PathLike, calib_pixels: np.ndarray, *,
                           head: str | None = None, input_name: str = "pixel_values",
                           batch_size: int = 8) -> dict[str, Any]:
    """Quantise ``src`` (the fp32 ONNX) into ``dst`` with NNCF (see the module docstring); returns what to
    record in ``tki.json``."""

    import nncf
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        OverflowFix,
    )


    if calib_pixels is None or len(calib_pixels) == 0:
        raise ExportError("openvino_int8: no calibration images")
    model = load_proto(src)
    keep = head_nodes(model, head, "openvino_int8")
    batches = [{input_name: np.ascontiguousarray(calib_pixels[i:i + batch_size], dtype=np.float32)}
               for i in range(0, len(calib_pixels), batch_size)]
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.ERROR)
    try:
        q = nncf.quantize(model, nncf.Dataset(batches), model_type=nncf.ModelType.TRANSFORMER,
                          preset=nncf.QuantizationPreset.MIXED, subset_size=len(calib_pixels),
                          advanced_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE),
                          ignored_scope=nncf.IgnoredScope(names=keep, validate=False) if keep else None)
    finally:
        nncf_log.setLevel(level)
    q.producer_name = "tki-sdk"
    save_proto(q, dst)
    check_onnx(dst, artifact="openvino_int8", standard_only=True)
    return {"scheme": "nncf_ptq", "quantizer": f"nncf {nncf.__version__}", "model_type": "transformer",
            "weights": "int8 (7-bit range, every layer) per-channel symmetric", "overflow_fix": "enable", "activations": "uint8 asymmetric, ranges calibrated (MinMax)",
            "calibration_images": int(len(calib_pixels)), "excluded_nodes": len(keep)}
