"""ONNX / TensorRT export of the fused CLIP visual encoder + TKI head (``tki-export``).

Modules (imported on demand; this package imports nothing heavy):

- :mod:`.fused`: ``FusedEncoder`` (``pixel_values -> TKIModel.encode_image -> embedding``), the exact
  export-friendly rewrites (attention, patch embedding, class-token-only last block), ``load_model``.
- :mod:`.onnx_export`: ``export_onnx`` (standard ONNX, dynamic batch), ``check_onnx``, graph utilities,
  ``ort_fused_graph`` (onnxruntime-specific fusions, the int8 source).
- :mod:`.quantize`: ``convert_fp16`` and the int8 schemes (dynamic, static QDQ).
- :mod:`.validate`: parity against float64 torch (``THRESHOLDS``, ``ParityResult``, ``ParityError``).
- :mod:`.tensorrt`: ``build_engine`` (TensorRT 10 Python API); :mod:`.triton`: ``write_triton_repo``.
- :mod:`.pipeline`: ``run_export`` / ``validate_export``; :mod:`.cli`: ``main`` (the ``tki-export`` script).
"""
