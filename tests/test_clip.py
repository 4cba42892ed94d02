"""CLIP loading: random init, local files in every supported layout, clear errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tki_sdk.train.clip import ClipLoadError, load_clip

TINY = "TKI-Tiny-ViT"


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_random_init_is_frozen_and_described() -> None:
    clip = load_clip(TINY)
    assert not clip.model.training
    assert all(not p.requires_grad for p in clip.model.parameters())
    assert clip.weights["source"] == "random"
    assert clip.image_size == (32, 32) and clip.embed_dim == 32 and clip.token_width == 64
    assert clip.preprocess_cfg["interpolation"] == "bicubic" and len(clip.preprocess_cfg["mean"]) == 3


def test_random_init_is_reproducible_and_leaves_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, b, c = load_clip(TINY, init_seed=3), load_clip(TINY, init_seed=3), load_clip(TINY, init_seed=4)
    assert torch.rand(1) == before  # global RNG untouched
    assert _same_weights(a.model, b.model)
    assert not _same_weights(a.model, c.model)


@pytest.mark.parametrize("layout", ["plain", "state_dict_module", "safetensors"])
def test_local_file_roundtrip(tmp_path: Path, layout: str) -> None:
    src = load_clip(TINY, init_seed=7).model
    sd = src.state_dict()
    if layout == "plain":
        path = tmp_path / "w.pt"
        torch.save(sd, path)
    elif layout == "state_dict_module":
        path = tmp_path / "epoch_1.pt"
        torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    else:
        from safetensors.torch import save_file

        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    clip = load_clip(TINY, str(path))
    assert clip.weights["source"] == "file" and len(clip.weights["sha256"]) == 64
    assert _same_weights(clip.model, src)


def test_vit_b32_state_dict_loads_back(tmp_path: Path) -> None:
    """A real open_clip ViT-B-32 state dict saved to a file loads back into ViT-B-32 unchanged."""
    import open_clip

    src = open_clip.create_model("ViT-B-32")
    path = tmp_path / "vit-b-32.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    clip = load_clip("ViT-B-32", str(path))
    assert _same_weights(clip.model, src)
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(clip.model.encode_image(x), src.eval().encode_image(x))


def test_errors_are_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(ClipLoadError, match="unknown model"):
        load_clip("ViT-Nope-99")
    with pytest.raises(ClipLoadError, match="does not exist"):
        load_clip(TINY, str(tmp_path / "missing.pt"))
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ClipLoadError, match="cannot read weights file"):
        load_clip(TINY, str(bad))
    with pytest.raises(ClipLoadError, match="neither a weights file nor a pretrained tag"):
        load_clip(TINY, "no-such-tag")
    # keys of another architecture: name the first missing and unexpected keys
    other = tmp_path / "other.pt"
    sd = load_clip(TINY).model.state_dict()
    sd["extra.weight"] = torch.zeros(1)
    del sd["ln_final.weight"]
    torch.save(sd, other)
    with pytest.raises(ClipLoadError, match=r"1 missing \(first: 'ln_final.weight'\), 1 unexpected \(first: 'extra.weight'\)"):
        load_clip(TINY, str(other))


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    """torch.load(weights_only=True): a file holding arbitrary Python objects is not unpickled."""
    path = tmp_path / "evil.pt"

    class Payload:
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"state_dict": {"x": Payload()}}, path)
    with pytest.raises(ClipLoadError, match="cannot read weights file"):
        load_clip(TINY, str(path))


def test_unreachable_hub_says_use_a_local_file(monkeypatch: pytest.MonkeyPatch) -> None:
    import open_clip.factory as factory

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(factory, "download_pretrained", offline)
    with pytest.raises(ClipLoadError, match="pass the local file with --pretrained FILE"):
        load_clip("ViT-B-32", "openai")
