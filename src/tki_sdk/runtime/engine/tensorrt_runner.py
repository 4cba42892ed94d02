"""``TensorRTRunner``: a serialized TensorRT engine (``model.plan``) as a backend beside
:class:`~tki_sdk.runtime.engine.ort_session.OrtSession`; the Embedder, the export validator and the GPU suite run
plans through it. Needs the ``tensorrt`` and ``cuda-python`` packages and an NVIDIA GPU (imported lazily)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["TensorRTRunner", "tensorrt_version"]


def tensorrt_version() -> str | None:
    """The installed ``tensorrt`` version, or ``None`` when it does not import."""
    try:
        import tensorrt as trt
    except Exception:  # noqa: BLE001 - absent or broken: not an engine here
        return None
    return str(trt.__version__)


class TensorRTRunner:
    """Runs a serialized TensorRT engine (``model.plan``) with the TensorRT 10 tensor API.

    Uses ``IExecutionContext.set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3`` on one CUDA
    stream, device buffers from ``cuda-python`` (``cuda.bindings.runtime``), grown on demand. Not thread-safe
    by itself (the Embedder serialises calls). The plan must have been built on this GPU model and
    TensorRT version.
    """

    def __init__(self, plan_path: str | os.PathLike, input_name: str, output_name: str) -> None:
        try:
            import tensorrt as trt
        except ImportError:
            raise ImportError(
                "backend='tensorrt' needs the tensorrt package (pip install 'tki-sdk[gpu]' from NVIDIA's index); "
                "use backend='onnxruntime' otherwise"
            ) from None
        try:
            from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
        except ImportError:
            try:
                from cuda import cudart  # type: ignore[no-redef]  # older cuda-python
            except ImportError:
                raise ImportError("backend='tensorrt' needs cuda-python (pip install cuda-python)") from None
        self._trt = trt
        self.version = str(getattr(trt, "__version__", "unknown"))
        self._cudart = cudart
        self._logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._logger)
        engine = runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
        if engine is None:
            raise RuntimeError(
                f"TensorRT could not deserialize {plan_path}: plans only load on the TensorRT version and GPU "
                "they were built with; rebuild it with tki-export --tensorrt"
            )
        self._runtime = runtime
        self.engine = engine
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        ins = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.input_name = input_name if input_name in ins else ins[0]
        self.output_name = output_name if output_name in outs else outs[0]
        self.input_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self.input_name)))
        self.output_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self.output_name)))
        shape = tuple(engine.get_tensor_shape(self.input_name))
        self.dynamic_batch = shape[0] == -1
        if self.dynamic_batch:
            _, _, max_shape = engine.get_tensor_profile_shape(self.input_name, 0)
            self.max_batch: int | None = int(max_shape[0])
        else:
            self.max_batch = int(shape[0])
        self._stream = self._check(cudart.cudaStreamCreate())
        self._bufs: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)

    def _check(self, result: Any) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise RuntimeError(f"CUDA error {err}")
        return rest[0] if len(rest) == 1 else (rest or None)

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._bufs.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                self._check(self._cudart.cudaFree(ptr))
            ptr = int(self._check(self._cudart.cudaMalloc(nbytes)))
            self._bufs[name] = (ptr, nbytes)
        return ptr

    def run(self, x: np.ndarray) -> np.ndarray:
        """``x`` [N, 3, H, W] (N within the plan's profile) -> output [N, D] as float32."""
        cudart = self._cudart
        x = np.ascontiguousarray(x, dtype=self.input_dtype)
        if not self.context.set_input_shape(self.input_name, tuple(x.shape)):
            raise ValueError(f"input shape {x.shape} outside the TensorRT plan's profile (max batch {self.max_batch})")
        out_shape = tuple(self.context.get_tensor_shape(self.output_name))
        out = np.empty(out_shape, dtype=self.output_dtype)
        d_in = self._buffer(self.input_name, x.nbytes)
        d_out = self._buffer(self.output_name, out.nbytes)
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(cudart.cudaMemcpyAsync(d_in, x.ctypes.data, x.nbytes, h2d, self._stream))
        self.context.set_tensor_address(self.input_name, d_in)
        self.context.set_tensor_address(self.output_name, d_out)
        if not self.context.execute_async_v3(int(self._stream)):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        self._check(cudart.cudaMemcpyAsync(out.ctypes.data, d_out, out.nbytes, d2h, self._stream))
        self._check(cudart.cudaStreamSynchronize(self._stream))
        return out.astype(np.float32, copy=False)

    def __del__(self) -> None:  # pragma: no cover - GPU only
        try:
            for ptr, _ in self._bufs.values():
                self._cudart.cudaFree(ptr)
            self._cudart.cudaStreamDestroy(self._stream)
        except Exception:
            pass

