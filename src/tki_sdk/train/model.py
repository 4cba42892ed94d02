"""``TKIModel``: frozen CLIP + learned domain vectors + head h, as one ``nn.Module``.

``encode_image(pixels)`` is the retrieval embedding (ARCHITECTURE.md, "From tki train to a search hit"), exactly what the
exported graphs compute::

    head "tki":  z = h(expmap0(I(x)/||I(x)||));  embedding = z/||z||     (output_space "ball_l2")
    head "none": embedding = I(x)/||I(x)||                              (output_space "clip_l2", vanilla CLIP)

Embeddings are compared by cosine (= inner product, they are unit vectors). For ball points, cosine equals
the cosine of their ``logmap0`` images, so "ball_l2" is also the L2-normalised tangent vector at the origin.

The retrieval metric is a recorded choice (:meth:`TKIModel.set_embedding`, ``tki-export --embedding``)::

    embedding "cosine" (default): the unit vectors above, metric "cos"
    embedding "ball":  z = h(...) itself, the raw ball point (output_space "ball"), compared by the
                       Poincaré distance (metric "poincare") or the inner product (metric "ip"); for a
                       Euclidean head the raw output (output_space "euclidean"), metric "ip" only
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tki_sdk.train.checkpoint import CheckpointError, load_checkpoint
from tki_sdk.common.checkpoint_config import CheckpointConfig
from tki_sdk.train.clip import ClipLoadError, LoadedClip, load_clip, sha256_file
from tki_sdk.train.head import HeadConfig, HyperbolicMLP


def _check_same_weights(recorded: dict[str, Any], loaded: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse CLIP weights other than those the head was trained on (its input features would differ)."""
    src, got = recorded.get("source", "random"), loaded.get("source")
    what = {"random": f"random-init CLIP (seed {recorded.get('init_seed', 0)})",
            "tag": f"open_clip weights {recorded.get('ref')!r}",
            "file": f"the weights file with sha256 {str(recorded.get('sha256'))[:12]}..."}.get(src, str(recorded))
    if src == "random":
        ok = got == "random" and int(loaded.get("init_seed", 0)) == int(recorded.get("init_seed", 0))
    elif src == "file":
        ok = got == "file" and loaded.get("sha256") == recorded.get("sha256")
    else:  # a tag: the same tag, or a local copy of its weights (whose hash the tag does not record)
        ok = (got == "tag" and loaded.get("ref") == recorded.get("ref")) or got == "file"
        if ok and got == "file":
            warnings.warn(
                f"{path} was trained on {what}; using the local file {loaded.get('ref')} as those weights "
                "(a tag records no hash to verify it against)",
                stacklevel=3,
            )
    if not ok:
        raise CheckpointError(
            f"{path} was trained on {what}; the CLIP weights given ({loaded.get('ref') or 'random init'}) are not "
            "the ones its head was trained on; pass the original weights (or none for the recorded source)"
        )


#: What ``encode_image`` returns (see the module docstring) and the metrics each allows (first = default).
EMBEDDINGS = {"cosine": ("cos",), "ball": ("poincare", "ip")}


class TKIModel(nn.Module):
    """The trained model. Build with :meth:`from_checkpoint` or :meth:`vanilla`."""

    def __init__(
        self,
        clip: LoadedClip,
        head: HyperbolicMLP | None,
        domain_vectors: torch.Tensor | None = None,
        classes: list[str] | None = None,
        config: CheckpointConfig | None = None,
        checkpoint: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.clip = clip
        self.visual = clip.model.visual
        self.head = head
        self.classes = list(classes or [])
        self.config = config  # the checkpoint's config.json (None for vanilla CLIP)
        self.checkpoint = checkpoint
        self.embedding, self.metric = "cosine", "cos"
        if domain_vectors is not None:
            self.register_buffer("domain_vectors", domain_vectors.detach().clone())
        else:
            self.domain_vectors = None
        self.eval()

    # -- construction ----------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, pretrained: str | os.PathLike | None = None, device: str = "cpu"
    ) -> "TKIModel":
        """Rebuild frozen CLIP + head from a ``tki train`` folder.

        ``pretrained=None`` loads the CLIP weights recorded in ``config.json`` (a tag, a file, or random init
        from the recorded seed). Other weights are an error (the head was trained on other features): a file
        whose SHA-256 differs, another tag, weights for a random-init checkpoint or another seed.
        """
        tensors, config = load_checkpoint(path)
        w = config.weights or {}
        init_seed = int(w.get("init_seed", 0))
        if pretrained is None and w.get("source") != "random":
            pretrained = w.get("ref")
        clip = load_clip(config.model_name, pretrained, device=device, init_seed=init_seed)
        _check_same_weights(w, clip.weights, path)
        head = HyperbolicMLP(HeadConfig.from_dict(config.head))
        head_state = {k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")}
        try:
            head.load_state_dict(head_state, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"{path}: head weights do not match config.json ({str(e).splitlines()[0]})") from None
        # load_checkpoint verified the weights file against this hash; older checkpoints lack it
        digest = config.weights_file_sha256 or sha256_file(Path(path) / "model.safetensors")
        ckpt = {"path": str(Path(path).resolve()), "sha256": digest}
        model = cls(clip, head, tensors["domain_vectors"], config.classes, config, ckpt)
        return model.to(device)

    @classmethod
    def vanilla(cls, model_name: str, pretrained: str | os.PathLike | None = None, device: str = "cpu") -> "TKIModel":
        """Vanilla CLIP (the paper's baseline): L2-normalised visual features, no head."""
        return cls(load_clip(model_name, pretrained, device=device), None).to(device)

    def set_embedding(self, embedding: str = "cosine", metric: str | None = None) -> "TKIModel":
        """Choose what :meth:`encode_image` returns and how it is compared (recorded in ``tki.json``):
        ``"cosine"`` (unit vectors, metric ``cos``) or ``"ball"`` (raw head output; metric ``poincare``, the
        default for a hyperbolic head, or ``ip``). ``ValueError`` for a combination that does not exist."""
        if embedding not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {sorted(EMBEDDINGS)}, got {embedding!r}")
        allowed = EMBEDDINGS[embedding]
        if embedding == "ball":
            if self.head is None:
                raise ValueError("--embedding ball needs a TKI head (vanilla CLIP has no ball); use --embedding cosine")
            if not self.head.hyperbolic:
                allowed = ("ip",)  # a Euclidean head's output is no ball point
        metric = allowed[0] if metric is None else metric
        if metric not in allowed:
            raise ValueError(f"--embedding {embedding} with this head allows metric {', '.join(allowed)}, not {metric!r}")
        self.embedding, self.metric = embedding, metric
        return self

    # -- inference -------------------------------------------------------------------------------------
    @property
    def output_space(self) -> str:
        if self.head is None:
            return "clip_l2"
        if self.embedding == "ball":
            return "ball" if self.head.hyperbolic else "euclidean"
        return "ball_l2"

    @property
    def embedding_dim(self) -> int:
        return self.clip.embed_dim if self.head is None else self.head.out_dim

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Raw CLIP visual features I(x) ``[N, D]``."""
        return self.visual(pixels)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Retrieval embedding of preprocessed images ``pixels [N,3,H,W]`` -> ``[N, D]``: unit vectors, or the
        raw head output for ``embedding == "ball"``."""
        f = self.visual(pixels)
        if self.head is None:
            return F.normalize(f, dim=-1)
        return self.head(f) if self.embedding == "ball" else self.head.embed(f)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encode_image(pixels)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Embed free text in the same space as images (text-to-image search): h applied to CLIP text features."""
        tok = self.clip.tokenizer(texts).to(next(self.clip.model.parameters()).device)
        f = self.clip.model.encode_text(tok)
        if self.head is None:
            return F.normalize(f, dim=-1)
        return self.head(f) if self.embedding == "ball" else self.head.embed(f)

    # -- description -----------------------------------------------------------------------------------
    def metadata_fields(self) -> dict[str, Any]:
        """The ``tki.json`` fields this model determines (export adds artifacts, opset, versions)."""
        head_cfg = None if self.head is None else self.head.config.to_dict()
        return {
            "model_name": self.clip.model_name,
            "weights": dict(self.clip.weights),
            "checkpoint": self.checkpoint,
            "head": "none" if self.head is None else "tki",
            "head_config": head_cfg,
            "output_space": self.output_space,
            "metric": self.metric,
            "embedding_dim": self.embedding_dim,
            "preprocess": dict(self.clip.preprocess_cfg),
        }


__all__ = ["TKIModel", "ClipLoadError", "CheckpointError"]
