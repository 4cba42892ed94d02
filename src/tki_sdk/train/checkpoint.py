"""Checkpoint folder I/O: ``model.safetensors`` (domain vectors ν and head h) + ``config.json``. No pickle.

``config.json`` is :class:`~tki_sdk.common.checkpoint_config.CheckpointConfig` (its module gives every
field); ``model.safetensors`` holds ``domain_vectors`` ``[P, W]`` and ``head.*``. The config records the
SHA-256 of the weights file it was written with, so a folder whose two files come from different runs is
refused on load.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import torch
from safetensors.torch import load, save

from tki_sdk.common.atomic import atomic_write_bytes, atomic_write_json
from tki_sdk.common.checkpoint_config import (
    CONFIG_FILE,
    CURVES_FILE,
    WEIGHTS_FILE,
    CheckpointConfig,
)
from tki_sdk.common.contract import ContractError

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "CONFIG_FILE", "WEIGHTS_FILE", "CURVES_FILE"]


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete or corrupt; the message says which file and why."""


def save_checkpoint(out_dir: str | os.PathLike, tensors: dict[str, torch.Tensor], config: CheckpointConfig) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``out_dir`` (created), each atomically; the config
    written records the weights file's SHA-256."""

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    blob = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    atomic_write_bytes(out / WEIGHTS_FILE, blob)
    config = dataclasses.replace(config, weights_file_sha256=hashlib.sha256(blob).hexdigest())
    atomic_write_json(out / CONFIG_FILE, config.to_dict())
    return out


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], CheckpointConfig]:
    """Read a checkpoint folder; raise :class:`CheckpointError` with one clear line on any problem."""

    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"checkpoint {p} is not a folder; pass the --out folder of `tki train`")
    cfg_path, w_path = p / CONFIG_FILE, p / WEIGHTS_FILE
    for f in (cfg_path, w_path):
        if not f.is_file():
            raise CheckpointError(f"checkpoint {p} has no {f.name}; it is incomplete, train it again")
    try:
        config = CheckpointConfig.load(cfg_path)
    except ContractError as e:
        raise CheckpointError(str(e)) from None
    blob = w_path.read_bytes()
    want = config.weights_file_sha256
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
