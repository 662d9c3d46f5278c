"""The student's optimiser: torch AdamW with the multi-tensor implementation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rewardkit.training.optim import build_optimizer


def test_adamw_is_multi_tensor_and_trains_only_what_requires_grad():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    opt = build_optimizer(model.parameters(), learning_rate=1e-3, betas=(0.9, 0.999),
                          weight_decay=1e-2, eps=1e-8)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["foreach"] is True
    assert [p for g in opt.param_groups for p in g["params"]] == list(model[1].parameters())
    # the same update as the single-tensor loop, bit for bit
    twin = nn.Linear(4, 2)
    twin.load_state_dict(model[1].state_dict())
    loop = torch.optim.AdamW(twin.parameters(), lr=1e-3, betas=(0.9, 0.999), weight_decay=1e-2,
                             eps=1e-8, foreach=False)
    for step in range(3):
        x = torch.randn(5, 4, generator=torch.Generator().manual_seed(step))
        for m, o in ((model[1], opt), (twin, loop)):
            o.zero_grad()
            m(x).square().sum().backward()
            o.step()
    for a, b in zip(model[1].parameters(), twin.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(model[0].parameters(), learning_rate=1e-3, betas=(0.9, 0.999),
                        weight_decay=0.0, eps=1e-8)
