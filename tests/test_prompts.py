"""Domain prompts: placeholder substitution equals CLIP on real words; truncated context equals 77 tokens."""
from __future__ import annotations

import pytest
import torch

from tki_sdk.train.clip import load_clip
from tki_sdk.train.prompts import PromptBank

CLASSES = ["dog", "ice cream", "hot air balloon"]  # multi-token class names


@pytest.fixture(scope="module")
def clip():
    return load_clip("TKI-Tiny-ViT", init_seed=11)


@pytest.fixture(scope="module")
def bank(clip):
    return PromptBank(clip, CLASSES, n_domains=3, generator=torch.Generator().manual_seed(0))


def _word_vector(clip, word: str) -> torch.Tensor:
    ids = clip.tokenizer.encode(word)
    assert len(ids) == 1, word
    return clip.model.token_embedding.weight[ids[0]]


@torch.no_grad()
def test_domain_vector_replaces_placeholder(clip, bank) -> None:
    """With ν_p set to the embedding of a real word, the prompts equal CLIP's encode_text of the sentence."""
    words = ["watercolor", "sketch", "photo"]
    bank.domain_vectors.copy_(torch.stack([_word_vector(clip, w) for w in words]))
    tok = clip.tokenizer
    want_full = clip.model.encode_text(tok([f"a {w} style of {c}." for w in words for c in CLASSES]))
    want_dom = clip.model.encode_text(tok([f"a {w} style of" for w in words]))
    want_cls = clip.model.encode_text(tok(CLASSES))
    for full in (False, True):
        got = bank.prompt_features(full_context=full)
        assert got.shape == (3, 3, clip.embed_dim)
        torch.testing.assert_close(got.reshape(9, -1), want_full, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(bank.domain_features(full_context=full), want_dom, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(bank.class_features(full_context=full), want_cls, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_truncated_context_equals_full_context(clip) -> None:
    bank = PromptBank(clip, CLASSES, n_domains=5, generator=torch.Generator().manual_seed(1))
    assert bank.short_length < bank.tower.context_length
    torch.testing.assert_close(bank.prompt_features(), bank.prompt_features(full_context=True), atol=1e-5, rtol=0)
    torch.testing.assert_close(bank.domain_features(), bank.domain_features(full_context=True), atol=1e-5, rtol=0)
    torch.testing.assert_close(bank.class_features(), bank.class_features(full_context=True), atol=1e-5, rtol=0)
    torch.testing.assert_close(bank.prompt_features(chunk=4), bank.prompt_features(), atol=1e-5, rtol=0)


@torch.no_grad()
def test_truncated_context_equals_full_context_vit_b32() -> None:
    clip = load_clip("ViT-B-32")
    bank = PromptBank(clip, ["dog", "giraffe", "person"], n_domains=2, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(bank.prompt_features(), bank.prompt_features(full_context=True), atol=1e-5, rtol=0)


def test_class_subset_and_gradients(bank) -> None:
    idx = torch.tensor([2, 0])
    sub = bank.prompt_features(idx)
    torch.testing.assert_close(sub, bank.prompt_features()[:, idx], atol=1e-6, rtol=0)
    bank.zero_grad()
    sub.sum().backward()
    assert bank.domain_vectors.grad is not None and bank.domain_vectors.grad.abs().sum() > 0
    assert all(p.grad is None for p in bank.tower.text.parameters())  # CLIP stays frozen


def test_bad_inputs(clip) -> None:
    with pytest.raises(ValueError, match="class list is empty"):
        PromptBank(clip, [])
    with pytest.raises(ValueError, match="at least 2"):
        PromptBank(clip, ["dog"], n_domains=1)
    with pytest.raises(ValueError, match="more than CLIP's context"):
        PromptBank(clip, ["dog " * 80])
