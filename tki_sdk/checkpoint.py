"""Checkpoint folder I/O: ``model.safetensors`` (domain vectors ν and head h) + ``config.json``. No pickle.

``config.json`` records the CLIP model name, the weights source and SHA-256 of the weights file, the
classes, P, the loss hyperparameters, the head architecture (curvature included), the package versions and
the training curves' file name. ``model.safetensors`` holds ``domain_vectors`` ``[P, W]`` and ``head.*``.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from .common.atomic import atomic_write_bytes

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CURVES_FILE = "train_curves.json"
CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete or corrupt; the message says which file and why."""


def save_checkpoint(
    out_dir: str | os.PathLike, tensors: dict[str, torch.Tensor], config: dict[str, Any]
) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``out_dir`` (created), each atomically.

    ``config.json`` records the SHA-256 of the weights file it belongs to, so a folder whose two files come
    from different runs (a crash between the two writes) is refused on load.
    """
    from safetensors.torch import save

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    blob = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    atomic_write_bytes(out / WEIGHTS_FILE, blob)
    config = {"format": CHECKPOINT_FORMAT, **config, "weights_file_sha256": hashlib.sha256(blob).hexdigest()}
    atomic_write_bytes(out / CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode())
    return out


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint folder; raise :class:`CheckpointError` with one clear line on any problem."""
    from safetensors.torch import load

    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"checkpoint {p} is not a folder; pass the --out folder of `tki train`")
    cfg_path, w_path = p / CONFIG_FILE, p / WEIGHTS_FILE
    for f in (cfg_path, w_path):
        if not f.is_file():
            raise CheckpointError(f"checkpoint {p} has no {f.name}; it is incomplete, train it again")
    try:
        config = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_path} is corrupt ({e}); train the checkpoint again") from None
    if not isinstance(config, dict) or "model_name" not in config or "head" not in config:
        raise CheckpointError(f"{cfg_path} is not a tki checkpoint config (no model_name/head)")
    if int(config.get("format", 1)) > CHECKPOINT_FORMAT:
        raise CheckpointError(f"{cfg_path} was written by a newer tki-sdk; upgrade tki-sdk")
    blob = w_path.read_bytes()
    want = config.get("weights_file_sha256")
    if want and hashlib.sha256(blob).hexdigest() != want:
        raise CheckpointError(
            f"{w_path} is not the weights file {cfg_path.name} was written with (an interrupted write or a "
            "mixed folder); train the checkpoint again"
        )
    try:
        tensors = load(blob)
    except Exception as e:  # noqa: BLE001 - safetensors raises several error types for bad files
        raise CheckpointError(f"{w_path} is corrupt ({type(e).__name__}: {e}); train the checkpoint again") from None
    if "domain_vectors" not in tensors:
        raise CheckpointError(f"{w_path} has no domain_vectors; it is not a tki checkpoint")
    return tensors, config
