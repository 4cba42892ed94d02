"""A Triton Inference Server model repository for an export folder (``--triton-repo DIR``).

One Triton model per artifact, named ``<name>_<precision>`` (``tki_fp32``, ``tki_int8``, ``tki_fp16``,
``tki_tensorrt_fp16``)::

    DIR/tki_fp32/config.pbtxt     backend "onnxruntime"      1/model.onnx
    DIR/tki_int8/config.pbtxt     backend "onnxruntime"      1/model.onnx   (CPU instances)
    DIR/tki_tensorrt_fp16/...     platform "tensorrt_plan"   1/model.plan   (GPU instances)

Each config declares ``max_batch_size`` (Triton's batch axis is implicit, so ``dims`` omit it), the input
``pixel_values`` ``TYPE_FP32 [3, H, W]`` and output ``embedding`` ``TYPE_FP32 [D]`` of ``tki.json``, and
dynamic batching. A copy of ``tki.json`` sits beside each config for clients (preprocessing, output space).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from tki_sdk.common.model_metadata import METADATA_FILE, ModelMetadata

__all__ = ["write_triton_repo", "config_pbtxt"]


def _preferred(max_batch: int) -> list[int]:
    return [b for b in (4, 8, 16, 32, 64, 128, 256) if b <= max_batch] or [max_batch]


def config_pbtxt(
    name: str,
    *,
    kind: str,
    input_name: str,
    output_name: str,
    image_size: tuple[int, int],
    embedding_dim: int,
    max_batch: int,
    instance_kind: str | None = None,
    queue_delay_us: int = 2000,
) -> str:
    """Text of one ``config.pbtxt``; ``kind`` is ``onnxruntime`` or ``tensorrt_plan``."""
    h, w = image_size
    lines = [f'name: "{name}"']
    if kind == "onnxruntime":
        lines += ['backend: "onnxruntime"', 'default_model_filename: "model.onnx"']
    elif kind == "tensorrt_plan":
        lines += ['platform: "tensorrt_plan"', 'default_model_filename: "model.plan"']
    else:
        raise ValueError(f"unknown Triton model kind {kind!r}")
    lines += [
        f"max_batch_size: {int(max_batch)}",
        "input [",
        "  {",
        f'    name: "{input_name}"',
        "    data_type: TYPE_FP32",
        f"    dims: [ 3, {int(h)}, {int(w)} ]",
        "  }",
        "]",
        "output [",
        "  {",
        f'    name: "{output_name}"',
        "    data_type: TYPE_FP32",
        f"    dims: [ {int(embedding_dim)} ]",
        "  }",
        "]",
        "dynamic_batching {",
        f"  preferred_batch_size: [ {', '.join(str(b) for b in _preferred(int(max_batch)))} ]",
        f"  max_queue_delay_microseconds: {int(queue_delay_us)}",
        "}",
    ]
    if instance_kind:
        lines += ["instance_group [", "  {", "    count: 1", f"    kind: {instance_kind}", "  }", "]"]
    return "\n".join(lines) + "\n"


def write_triton_repo(
    repo: str | os.PathLike,
    export_dir: str | os.PathLike,
    *,
    max_batch: int = 64,
    prefix: str = "tki",
) -> dict[str, Any]:
    """Write the repository (see module docstring) for every artifact in ``export_dir/tki.json``."""
    export_dir = Path(export_dir)
    md = ModelMetadata.load(export_dir)
    repo = Path(repo)
    repo.mkdir(parents=True, exist_ok=True)
    models: dict[str, Any] = {}
    for precision, art in (md.artifacts or {}).items():
        fname = str(art.get("file", ""))
        src = export_dir / fname
        if not src.is_file():
            continue
        if fname.endswith(".onnx"):
            kind, target = "onnxruntime", "model.onnx"
            instance = "KIND_CPU" if precision == "int8" else None
        elif fname.endswith((".plan", ".engine")):
            kind, target, instance = "tensorrt_plan", "model.plan", "KIND_GPU"
        else:
            continue
        name = f"{prefix}_{precision}"
        mdir = repo / name
        (mdir / "1").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, mdir / "1" / target)
        mb = int(art.get("max_batch", max_batch)) if kind == "tensorrt_plan" else int(max_batch)
        (mdir / "config.pbtxt").write_text(config_pbtxt(
            name, kind=kind, input_name=md.input_name, output_name=md.output_name,
            image_size=(int(md.preprocess.size[0]), int(md.preprocess.size[1])),
            embedding_dim=int(md.embedding_dim), max_batch=mb, instance_kind=instance,
        ))
        shutil.copyfile(export_dir / METADATA_FILE, mdir / METADATA_FILE)
        models[name] = {"precision": precision, "kind": kind, "path": str(mdir), "max_batch_size": mb}
    return {"repository": str(repo), "models": models}
