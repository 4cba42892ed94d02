"""``OpenVINORunner``: one exported model (ONNX, fp32 or int8 QDQ) compiled by OpenVINO for the CPU.

``openvino`` is imported when a runner is built, never at module import: it is the optional
``tki-sdk[openvino]`` extra. The runner reads the ONNX file directly (no IR conversion on disk), compiles it
with ``PERFORMANCE_HINT=LATENCY`` (one stream: every thread works on the one batch in flight, as
onnxruntime's intra-op pool does), ``INFERENCE_NUM_THREADS=threads`` and ``INFERENCE_PRECISION_HINT=f32``:
without the last, OpenVINO computes in bfloat16 on CPUs that have it (AVX-512 BF16, AMX), which changes the
numbers the export validated. int8 QDQ graphs (``model.ov.int8.onnx``, quantised with NNCF) run on
OpenVINO's int8 kernels all the same: the hint only governs layers left in float.

``run(x)`` is safe to call from several threads (one infer request behind a lock).
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["OpenVINORunner", "OPENVINO_MISSING", "openvino_version"]

OPENVINO_MISSING = "OpenVINO is not installed; pip install 'tki-sdk[openvino]' (openvino, nncf)"


def plain_openvino_request(path: str | os.PathLike, threads: int) -> Callable[[np.ndarray], Any]:
    """``x -> outputs`` of a plain OpenVINO CPU compile of ``path`` with only the thread count set (the
    reference the benchmarks compare the Embedder's cost with)."""
    import openvino as ov

    cm = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": int(threads)})
    req = cm.create_infer_request()
    return lambda x: req.infer({0: x})


def openvino_version() -> str | None:
    """The installed ``openvino`` version, or ``None`` when it does not import."""
    try:
        import openvino as ov
    except Exception:  # noqa: BLE001 - absent or broken: not an engine here
        return None
    return str(ov.__version__)


class OpenVINORunner:
    """``run(x[N,3,H,W] float32) -> [N,D] float32`` with OpenVINO on the CPU (see the module docstring).

    Attributes: ``path``, ``threads`` (as asked; ``None``: OpenVINO's choice), ``input_dtype`` (float32),
    ``version``, ``provider`` (``"OpenVINO CPU"``)."""

    provider = "OpenVINO CPU"
    input_dtype = np.float32

    def __init__(self, path: str | os.PathLike, threads: int | None = None, *, input_name: str | None = None,
                 output_name: str | None = None) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise ImportError(OPENVINO_MISSING) from None
        self.path = Path(path)
        self.threads = int(threads) if threads else None
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        core = ov.Core()
        model = core.read_model(str(self.path))
        self._compiled = core.compile_model(model, "CPU", config)
        self._input = self._port(self._compiled.inputs, input_name)
        self._output = self._port(self._compiled.outputs, output_name)
        self._request = self._compiled.create_infer_request()
        self._lock = threading.Lock()
        self.version = str(ov.__version__)

    @staticmethod
    def _port(ports: Any, name: str | None) -> Any:
        if name:
            for p in ports:
                if name in p.get_names():
                    return p
        return ports[0]

    def run(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        with self._lock:
            out = self._request.infer({self._input: x})[self._output]
            return np.array(out, dtype=np.float32, copy=True)
