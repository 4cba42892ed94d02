"""The int8 choices of the export, measured on this CPU: ``tki-bench throughput --int8-variants``.

Each variant quantises the same onnxruntime-fused fp32 graph (the head stays float32, only ``MatMul`` with
constant weights is quantised, as in ``export/quantize.py``) and differs in one choice:

* scheme: ``dynamic`` (activations quantised per batch at run time) or ``static`` QDQ (ranges calibrated on
  real images);
* weights per-channel or per-tensor;
* U8S8 (uint8 activations x int8 weights) or S8S8;
* ``reduce_range`` (7-bit weights) on or off.

Per variant: parity (min cosine against ``TKIModel.encode_image`` in float64 on real images and random
tensors, the export's validator), img/s at the suite's batch and threads (interleaved rounds, with plain fp32
in the same rounds), and onnxruntime's per-operator share of kernel time (which ops run int8, which stay fp32).
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["VARIANTS", "run_variants"]

#: name -> (scheme, per_channel, activations, reduce_range)
VARIANTS: dict[str, tuple[str, bool, str, bool]] = {
    "dynamic per-tensor U8S8 7-bit": ("dynamic", False, "uint8", True),
    "dynamic per-tensor U8S8 8-bit": ("dynamic", False, "uint8", False),
    "dynamic per-channel U8S8 7-bit": ("dynamic", True, "uint8", True),
    "static QDQ per-channel U8S8 7-bit": ("static_qdq", True, "uint8", True),
    "static QDQ per-channel U8S8 8-bit": ("static_qdq", True, "uint8", False),
    "static QDQ per-tensor U8S8 7-bit": ("static_qdq", False, "uint8", True),
    "static QDQ per-channel S8S8 7-bit": ("static_qdq", True, "int8", True),
    "static QDQ per-channel S8S8 8-bit": ("static_qdq", True, "int8", False),
}


def run_variants(model: Any, fp32_path: Path, head: str | None, calib: np.ndarray, val: np.ndarray, image_source: str,
                 threads: int, batch: int, rounds: int,
                 profile: Callable[[Path, np.ndarray, int], dict[str, Any]]) -> dict[str, Any]:
    """Quantise, validate, time and profile every variant (see the module docstring)."""
    from tki_sdk.export.onnx_export import ort_fused_graph
    from tki_sdk.export.quantize import quantize_int8_dynamic, quantize_int8_static
    from tki_sdk.export.validate import OrtRunner, build_inputs, measure_interleaved, validate_runner

    inputs = build_inputs(model, val, image_source=image_source, large_batch=8)
    x = np.random.default_rng(0).standard_normal((batch, 3, *val.shape[2:])).astype(np.float32)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tki-int8-variants-") as tmp:
        src = Path(tmp) / "fused.onnx"
        ort_fused_graph(fp32_path, src)
        runners: dict[str, Callable[[], Any]] = {"fp32": (lambda r=OrtRunner(fp32_path, threads): r.run(x))}
        for i, (name, (scheme, per_channel, acts, rr)) in enumerate(VARIANTS.items()):
            p = Path(tmp) / f"v{i}.onnx"
            if scheme == "dynamic":
                quantize_int8_dynamic(src, p, per_channel=per_channel, head=head, reduce_range=rr)
            else:
                quantize_int8_static(src, p, calib, per_channel=per_channel, head=head, reduce_range=rr,
                                     activations=acts)
            r = OrtRunner(p, threads)
            res = validate_runner(f"int8:{name}", p.name, r.run, inputs)
            prof = profile(p, x, threads)
            out[name] = {"scheme": scheme, "per_channel": per_channel, "activations": acts, "reduce_range": rr,
                         "min_cosine": res.min_cosine, "pass": res.passed,
                         "op_share": dict(list(prof.get("op_share", {}).items())[:8])}
            runners[name] = (lambda r=r: r.run(x))
        times = measure_interleaved(runners, rounds)
    fp32_ips = batch / float(np.median(times["fp32"]))
    for name in VARIANTS:
        ips = batch / float(np.median(times[name]))
        out[name].update({"images_per_s": ips, "vs_fp32": ips / fp32_ips})
    return {"fp32_images_per_s": fp32_ips, "batch_size": batch, "threads": threads, "rounds": rounds,
            "reference": "TKIModel.encode_image in float64", "images": image_source, "variants": out}
