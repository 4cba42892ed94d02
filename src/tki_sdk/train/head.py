r"""The universal projection h: a hyperbolic (Poincaré-ball) MLP, or its Euclidean twin for the ablation.

Paper, section 4.2: "our modified version only replaces the Euclidean layer with a non-Euclidean layer of
equivalent size, while the remainder of the structure remains unaltered"; the backbone output is taken as
a tangent vector at the origin and mapped into the ball. Concretely, for a CLIP feature f::

    u   = f / ||f||                     (input_norm=True; CLIP compares features by cosine, and image and
                                         text features differ in raw norm, so only the direction carries over)
    x_0 = expmap0(u)                    (into the ball of curvature -c)
    x_l = MobiusLinear_l(x_{l-1})       = (W_l ⊗_c x_{l-1}) ⊕_c expmap0(b_l)
    x_l = expmap0(act(logmap0(x_l)))    (between layers: the nonlinearity acts in the tangent space at 0)
    h(f) = x_L                          (a point of the ball)

Width and depth are not in the paper. Defaults: depth 2, hidden width = CLIP's embedding width (a same-size
projection, the smallest MLP with a nonlinearity), ReLU, nn.Linear's initialisation, c = 1.
``geometry="euclidean"`` gives the Table 7 ablation: the same sizes with nn.Linear layers, no maps.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tki_sdk.train import hyperbolic as H

_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "tanh": torch.tanh}


@dataclass
class HeadConfig:
    """Architecture of h. ``hidden_dim``/``out_dim`` of None mean "same as in_dim"."""

    in_dim: int
    hidden_dim: int | None = None
    out_dim: int | None = None
    depth: int = 2
    curvature: float = 1.0
    geometry: str = "hyperbolic"  # or "euclidean"
    activation: str = "relu"
    input_norm: bool = True

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise ValueError(f"head depth must be at least 1, got {self.depth}")
        if self.curvature <= 0:
            raise ValueError(f"curvature c must be > 0 (the ball has curvature -c), got {self.curvature}")
        if self.geometry not in ("hyperbolic", "euclidean"):
            raise ValueError(f"head geometry must be 'hyperbolic' or 'euclidean', got {self.geometry!r}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}")

    def sizes(self) -> list[int]:
        hid = self.hidden_dim or self.in_dim
        out = self.out_dim or self.in_dim
        return [self.in_dim] + [hid] * (self.depth - 1) + [out]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "HeadConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class MobiusLinear(nn.Module):
    r"""Hyperbolic linear layer: :math:`y = (W \otimes_c x) \oplus_c \exp_0^c(b)`.

    ``weight`` ``[out, in]`` and ``bias`` (a tangent vector at the origin) are Euclidean parameters,
    initialised as ``nn.Linear``'s.
    """

    def __init__(self, in_features: int, out_features: int, c: float) -> None:
        super().__init__()
        ref = nn.Linear(in_features, out_features)
        self.weight = nn.Parameter(ref.weight.detach().clone())
        self.bias = nn.Parameter(ref.bias.detach().clone())
        self.c = float(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = H.mobius_matvec(self.weight, x, self.c)
        return H.mobius_add(y, H.expmap0(self.bias, self.c), self.c)


class HyperbolicMLP(nn.Module):
    """h(·) of the paper (see module docstring). ``forward`` returns ball points (or Euclidean vectors for
    the ablation); ``embed`` returns the retrieval embedding, the L2-normalised output."""

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.config = config
        sizes = config.sizes()
        layer = (lambda i, o: MobiusLinear(i, o, config.curvature)) if self.hyperbolic else nn.Linear
        self.layers = nn.ModuleList(layer(i, o) for i, o in zip(sizes[:-1], sizes[1:]))

    @property
    def hyperbolic(self) -> bool:
        return self.config.geometry == "hyperbolic"

    @property
    def out_dim(self) -> int:
        return self.config.sizes()[-1]

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        c = self.config.curvature
        act = _ACTIVATIONS[self.config.activation]
        x = F.normalize(feats, dim=-1) if self.config.input_norm else feats
        if self.hyperbolic:
            x = H.expmap0(x, c)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = H.expmap0(act(H.logmap0(x, c)), c) if self.hyperbolic else act(x)
        return x

    def embed(self, feats: torch.Tensor) -> torch.Tensor:
        """Retrieval embedding ("ball_l2"): h(f)/||h(f)||. For ball points, the cosine of two points equals
        the cosine of their logmap0 images (logmap0 only rescales), so this is also the tangent direction."""
        return F.normalize(self(feats), dim=-1)
