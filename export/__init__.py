"""ONNX / TensorRT export of the fused CLIP visual encoder + TKI head (``tki-export``)."""
