"""Torch-free runtime: CLIP-exact preprocessing, ``Embedder`` (onnxruntime / TensorRT), ``Gallery`` (usearch).

Imports here must never pull in torch, torchvision, open_clip or geoopt.
"""
