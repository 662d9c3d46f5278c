"""The backbone-owned conditioning object: batching without knowing what is inside."""

from __future__ import annotations

import pytest
import torch

from rewardkit.backbones import Conditioning


def sdxl_like(batch: int, seed: int = 0) -> Conditioning:
    g = torch.Generator().manual_seed(seed)
    return Conditioning(torch.randn(batch, 7, 16, generator=g),
                        {"text_embeds": torch.randn(batch, 8, generator=g),
                         "time_ids": torch.arange(batch * 6.0).view(batch, 6)})


def test_cat_index_repeat_to_keep_every_tensor_aligned():
    a, b = sdxl_like(2, 0), sdxl_like(3, 1)
    both = Conditioning.cat([a, b])
    assert len(both) == 5 and set(both.added) == {"text_embeds", "time_ids"}
    assert torch.equal(both.added["text_embeds"][2:], b.added["text_embeds"])
    picked = both.index(torch.tensor([4, 0]))
    assert torch.equal(picked.prompt_embeds[0], b.prompt_embeds[2])
    assert torch.equal(picked.added["time_ids"][1], a.added["time_ids"][0])
    tripled = a.repeat(3)
    assert len(tripled) == 6 and torch.equal(tripled.added["text_embeds"][4], a.added["text_embeds"][0])
    half = a.to(dtype=torch.float16)
    assert half.prompt_embeds.dtype == half.added["text_embeds"].dtype == torch.float16
    assert a.added_cond_kwargs.keys() == {"text_embeds", "time_ids"}
    assert Conditioning(torch.zeros(1, 2, 3)).added_cond_kwargs is None


def test_a_misaligned_batch_is_refused():
    with pytest.raises(ValueError, match="time_ids"):
        Conditioning(torch.zeros(2, 7, 16), {"time_ids": torch.zeros(3, 6)})
