"""Frozen CLIP from open_clip: random init, an open_clip pretrained tag, or a local weights file.

``load_clip(model_name, pretrained)`` is the single entry point:

- ``pretrained=None`` (or ``"random"``): random initialisation. Results carry no meaning for accuracy,
  but every shape and code path is real (tests and demos use it).
- an open_clip pretrained tag (``"openai"``, ``"laion2b_s34b_b79k"``, ...): downloaded by open_clip from
  its model hub; where no hub is reachable the error says to pass a local weights file instead.
- a local file: a state dict saved with ``torch.save`` (read with ``torch.load(weights_only=True)``,
  never unpickling arbitrary objects), a ``.safetensors`` file, or open_clip's training checkpoint
  layout (``{"state_dict": ...}`` with ``module.`` prefixes). Keys must match the architecture exactly.

Both towers are frozen (``requires_grad=False``, eval mode). Weights for OpenAI's CLIP use QuickGELU:
load them with the ``-quickgelu`` model name (``ViT-B-32-quickgelu``), as open_clip does.
"""
from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if "usearch.compiled" in sys.modules and "torch" not in sys.modules:
    warnings.warn(
        "usearch was imported before torch: torch.jit and ONNX export may hang (its statically linked "
        "libstdc++ breaks torch's C++ exceptions, pytorch/pytorch#109923); import torch (or tki_sdk.train.model) "
        "before tki_sdk.runtime.Gallery / usearch",
        RuntimeWarning,
        stacklevel=2,
    )

import open_clip
import torch  # noqa: E402
from open_clip.factory import convert_to_custom_text_state_dict, resize_pos_embed
from open_clip.model import get_model_preprocess_cfg
from torch import nn  # noqa: E402

from tki_sdk.common.atomic import sha256_file

_CONFIG_DIR = Path(__file__).parent / "model_configs"
_registered = False


class ClipLoadError(ValueError):
    """A CLIP model or its weights could not be loaded; the message says what to do."""


def _register_configs() -> None:
    """Make the SDK's own small open_clip configs (``TKI-Tiny-ViT``) known to open_clip."""
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(_CONFIG_DIR)
        _registered = True


def available_models() -> list[str]:
    """Architecture names open_clip can build (plus the SDK's small test configs)."""

    _register_configs()
    return sorted(open_clip.list_models())


@dataclass
class LoadedClip:
    """A frozen open_clip model and what export and the runtime need to know about it."""

    model: nn.Module
    model_name: str
    weights: dict[str, Any]
    preprocess_cfg: dict[str, Any]
    image_size: tuple[int, int]
    embed_dim: int
    token_width: int
    context_length: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokenizer(self):

        return open_clip.get_tokenizer(self.model_name)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a weights file without unpickling arbitrary objects.

    ``.safetensors`` via safetensors; anything else via ``torch.load(weights_only=True)``. Accepts a bare
    state dict or ``{"state_dict": {...}}``; strips DistributedDataParallel's ``module.`` prefixes.
    """
    p = Path(path)
    if not p.is_file():
        raise ClipLoadError(f"weights file {p} does not exist; pass an existing .pt/.pth/.bin/.safetensors file")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(p), device="cpu")
        else:
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure means the same thing to the user
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ClipLoadError(
            f"cannot read weights file {p} ({first}); it must be a state dict saved with torch.save "
            "or a .safetensors file"
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ClipLoadError(f"weights file {p} does not hold a state dict of tensors")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _load_into(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load a state dict strictly, with open_clip's compatibility fixes, naming mismatched keys."""

    if "positional_embedding" in state_dict and not hasattr(model, "positional_embedding"):
        state_dict = convert_to_custom_text_state_dict(state_dict)
    if "logit_scale" in state_dict and state_dict["logit_scale"].ndim != model.logit_scale.ndim:
        state_dict["logit_scale"] = state_dict["logit_scale"].reshape(model.logit_scale.shape)
    resize_pos_embed(state_dict, model)
    expected = set(model.state_dict().keys())
    got = set(state_dict.keys())
    missing = sorted(expected - got)
    unexpected = sorted(got - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first: {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]!r})")
        raise ClipLoadError(
            f"weights in {source} do not match this architecture: " + ", ".join(parts)
            + "; check --model matches the weights"
        )
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        line = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e).splitlines()[0])
        raise ClipLoadError(f"weights in {source} do not match this architecture: {line}") from None


def freeze(model: nn.Module) -> nn.Module:
    """No gradients, eval mode (dropout off): the CLIP towers never train in TKI."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _create(model_name: str) -> nn.Module:
    """An open_clip model with random weights (the weights source is recorded in ``LoadedClip.weights``;
    the console scripts drop open_clip's "no pretrained weights" notice, see
    :func:`tki_sdk.cli.base.configure_logging`)."""

    return open_clip.create_model(model_name, pretrained=None, device="cpu")


def load_clip(
    model_name: str,
    pretrained: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    init_seed: int = 0,
) -> LoadedClip:
    """Build an open_clip model by name and load its weights (see module docstring). Both towers frozen.

    Random initialisation runs under ``torch.manual_seed(init_seed)`` (the global RNG state is restored
    afterwards), so the same name and seed rebuild the same random CLIP; a checkpoint records the seed.
    """

    _register_configs()
    if model_name not in open_clip.list_models():
        raise ClipLoadError(
            f"unknown model {model_name!r}; choose one of open_clip's architectures, e.g. ViT-B-32, "
            "ViT-B-32-quickgelu, RN50, ViT-L-14 (see `python -c 'import open_clip; print(open_clip.list_models())'`)"
        )
    ref = None if pretrained in (None, "", "random", "none") else str(pretrained)
    weights: dict[str, Any]
    if ref is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            model = _create(model_name)
        weights = {"source": "random", "ref": None, "sha256": None, "init_seed": int(init_seed)}
    elif Path(ref).is_file() or os.sep in ref or ref.endswith((".pt", ".pth", ".bin", ".safetensors")):
        path = Path(ref)
        state_dict = read_state_dict(path)
        model = _create(model_name)
        _load_into(model, state_dict, str(path))
        weights = {"source": "file", "ref": str(path.resolve()), "sha256": sha256_file(path)}
    else:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        if ref not in tags:
            raise ClipLoadError(
                f"{ref!r} is neither a weights file nor a pretrained tag of {model_name} "
                f"(tags: {', '.join(tags) or 'none'})"
            )
        try:
            model = open_clip.create_model(model_name, pretrained=ref, device="cpu")
        except Exception as e:  # noqa: BLE001 - download failures come in many types
            raise ClipLoadError(
                f"could not download {model_name} weights {ref!r} from the model hub "
                f"({type(e).__name__}); download them elsewhere and pass the local file with --pretrained FILE"
            ) from None
        weights = {"source": "tag", "ref": ref, "sha256": None}

    freeze(model)
    model.to(device)

    pp = dict(get_model_preprocess_cfg(model))
    size = pp.get("size", 224)
    size = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    pp = {
        "size": list(size),
        "mode": pp.get("mode", "RGB"),
        "mean": [float(v) for v in pp.get("mean", open_clip.OPENAI_DATASET_MEAN)],
        "std": [float(v) for v in pp.get("std", open_clip.OPENAI_DATASET_STD)],
        "interpolation": pp.get("interpolation", "bicubic"),
        "resize_mode": pp.get("resize_mode", "shortest"),
        "fill_color": int(pp.get("fill_color", 0)),
    }
    text = model.text if hasattr(model, "text") else model
    return LoadedClip(
        model=model,
        model_name=model_name,
        weights=weights,
        preprocess_cfg=pp,
        image_size=size,
        embed_dim=int(model.visual.output_dim),
        token_width=int(text.token_embedding.weight.shape[1]),
        context_length=int(text.positional_embedding.shape[0]),
    )
