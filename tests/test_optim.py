"""The student's optimiser: torch AdamW, fused where torch fuses it (CPU included, from torch 2.4)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rewardkit.training.optim import build_optimizer


def cpu_fuses_adamw() -> bool:
    """Whether this torch has a fused AdamW kernel for CPU tensors (torch >= 2.4)."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:
        return False
    return "cpu" in _get_fused_kernels_supported_devices()


def test_adamw_is_fused_where_torch_can_and_trains_only_what_requires_grad():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    opt = build_optimizer(model.parameters(), learning_rate=1e-3, betas=(0.9, 0.999),
                          weight_decay=1e-2, eps=1e-8)
    assert isinstance(opt, torch.optim.AdamW)
    if cpu_fuses_adamw():
        assert opt.defaults["fused"] is True
    else:  # torch < 2.4 has no CPU kernel: the multi-tensor AdamW
        assert opt.defaults["foreach"] is True and not opt.defaults["fused"]
    assert [p for g in opt.param_groups for p in g["params"]] == list(model[1].parameters())
    # the update of the single-tensor loop, to float32 rounding (one kernel reorders the maths)
    twin = nn.Linear(4, 2)
    twin.load_state_dict(model[1].state_dict())
    start = [p.detach().clone() for p in twin.parameters()]
    loop = torch.optim.AdamW(twin.parameters(), lr=1e-3, betas=(0.9, 0.999), weight_decay=1e-2,
                             eps=1e-8, foreach=False)
    for step in range(3):
        x = torch.randn(5, 4, generator=torch.Generator().manual_seed(step))
        for m, o in ((model[1], opt), (twin, loop)):
            o.zero_grad()
            m(x).square().sum().backward()
            o.step()
    for a, b, s in zip(model[1].parameters(), twin.parameters(), start):
        assert (b - s).abs().max() > 1e-3  # they moved
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_deepspeed_gets_the_multi_tensor_adamw(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    opt = build_optimizer(nn.Linear(3, 2).parameters(), learning_rate=1e-3, betas=(0.9, 0.999),
                          weight_decay=0.0, eps=1e-8)
    assert opt.defaults["foreach"] is True and not opt.defaults["fused"]


def test_no_trainable_parameters_is_refused():
    model = nn.Sequential(nn.Linear(3, 4))
    model[0].requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(model[0].parameters(), learning_rate=1e-3, betas=(0.9, 0.999),
                        weight_decay=0.0, eps=1e-8)
