"""Inference engines (torch-free): CLIP-exact preprocessing, image decoding, the onnxruntime / OpenVINO /
TensorRT runners, the artifact checks, the measured engine choice and the ``Embedder`` over them."""
