"""PromptCache: a reward model's text side computed once per distinct prompt, bounded, no graphs."""

from __future__ import annotations

import pytest
import torch

from rewardkit.rewards import PromptCache


class Encoder:
    """A text encoder with trainable weights that records the prompts of each call."""

    def __init__(self) -> None:
        self.weight = torch.nn.Parameter(torch.randn(4, 3, generator=torch.Generator().manual_seed(0)))
        self.calls: list[list[str]] = []

    def features(self, prompts: list[str]) -> torch.Tensor:
        ids = torch.tensor([[len(p), sum(map(ord, p)) % 97, p.count(" ")] for p in prompts],
                           dtype=torch.float32)
        return ids @ self.weight.T

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        self.calls.append(list(prompts))
        return self.features(prompts)


def test_each_distinct_prompt_is_encoded_once_and_rows_follow_the_list():
    encoder = Encoder()
    cache = PromptCache(encoder)
    captions = ["a cat", "a red dog", "a tree"]
    step = captions * 3  # an LRM step scores three images per caption
    first, second = cache(step), cache(captions)
    assert encoder.calls == [captions]
    with torch.no_grad():
        torch.testing.assert_close(first, encoder.features(step))
    assert torch.equal(second, first[:3])
    cache(["a cat", "a boat"])
    assert encoder.calls[-1] == ["a boat"]  # a changed list: only its new prompt is encoded


def test_tuples_of_rows_are_cached_alike():
    calls = []

    def tokenize(prompts):
        calls.append(prompts)
        ids = torch.tensor([[len(p), 1] for p in prompts])
        return ids, torch.ones_like(ids)

    cache = PromptCache(tokenize)
    ids, mask = cache(["ab", "abc", "ab"])
    again = cache(["abc"])
    assert ids.tolist() == [[2, 1], [3, 1], [2, 1]] and mask.shape == (3, 2)
    assert isinstance(again, tuple) and again[0].tolist() == [[3, 1]] and len(calls) == 1


def test_the_cache_is_bounded_and_a_larger_batch_is_still_answered():
    encoder = Encoder()
    cache = PromptCache(encoder, size=2)
    prompts = [f"caption {i}" for i in range(5)]
    with torch.no_grad():
        expected = encoder.features(prompts)
    torch.testing.assert_close(cache(prompts), expected)
    assert len(cache) == 2 and "caption 4" in cache and "caption 0" not in cache
    for i in range(50):  # a training run: new captions every step
        cache([f"step {i} a", f"step {i} b"])
    assert len(cache) == 2
    cache(["caption 0"])
    assert encoder.calls[-1] == ["caption 0"]  # evicted, so encoded again
    with pytest.raises(ValueError, match="at least 1"):
        PromptCache(encoder, size=0)


def test_no_autograd_graph_is_kept_even_with_grad_enabled():
    encoder = Encoder()
    cache = PromptCache(encoder)
    with torch.enable_grad():
        out = cache(["a cat", "a dog"])
    assert not out.requires_grad and out.grad_fn is None
    assert all(not row.requires_grad and row.grad_fn is None
               for rows in cache._rows.values() for row in rows)


def test_clear_drops_every_row():
    encoder = Encoder()
    cache = PromptCache(encoder)
    cache(["a cat"])
    cache.clear()
    cache(["a cat"])
    assert len(encoder.calls) == 2 and len(cache) == 1
