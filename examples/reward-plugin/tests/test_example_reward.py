"""Tests of the example plugin: the rewardkit contract, known values, gradients, registration.

Run from this folder with ``python -m pytest`` once the plugin and rewardkit are installed
(``pip install -e . --no-deps`` in a rewardkit environment).
"""

from __future__ import annotations

import pytest
import torch

import rewardkit_example_reward.plugin as plugin_module
from rewardkit.errors import RewardModelError
from rewardkit.plugins import load_host
from rewardkit.testing import check_reward_model
from rewardkit_example_reward import Colorfulness, Sharpness


@pytest.mark.parametrize("rm", [Colorfulness(), Colorfulness(scale=255.0), Sharpness(),
                                Sharpness(log=False)], ids=lambda rm: rm.name)
def test_meets_the_reward_model_contract(rm):
    check_reward_model(rm, image_size=16, batch=3)


def solid(r: float, g: float, b: float, size: int = 8) -> torch.Tensor:
    return torch.tensor([r, g, b], dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, size, size).clone()


def test_colorfulness_known_values():
    rm = Colorfulness()
    grey, red = solid(0.5, 0.5, 0.5), solid(1.0, 0.0, 0.0)
    scores = rm(torch.cat([grey, red]), ["", ""])
    # grey: rg = yb = 0 everywhere -> only the eps terms remain
    assert scores[0].item() == pytest.approx(1.3e-4, abs=1e-5)
    # pure red: rg = 1, yb = 0.5, no spread -> 0.3 * sqrt(1.25) (+ eps terms)
    assert scores[1].item() == pytest.approx(0.3 * 1.25 ** 0.5, abs=1e-3)
    # half red / half blue: large spread
    split = torch.cat([solid(1, 0, 0)[..., :4], solid(0, 0, 1)[..., 4:]], dim=-1)
    assert rm(split, [""]).item() > scores[1].item()


def test_sharpness_ranks_detail_above_blur():
    rm = Sharpness(log=False)
    checker = ((torch.arange(16).view(1, -1) + torch.arange(16).view(-1, 1)) % 2).float()
    sharp = checker.expand(1, 3, 16, 16).clone()
    blurred = torch.nn.functional.avg_pool2d(sharp, 3, stride=1, padding=1)
    flat = torch.full((1, 3, 16, 16), 0.3)
    scores = rm(torch.cat([sharp, blurred, flat]), ["", "", ""])
    assert scores[0] > scores[1] > scores[2]
    assert scores[2].item() == pytest.approx(0.0, abs=1e-8)
    # a checkerboard of 0/1 has a Laplacian of +-4 everywhere: variance 16
    assert scores[0].item() == pytest.approx(16.0, rel=1e-5)


def test_sharpness_rejects_tiny_images():
    with pytest.raises(RewardModelError, match="'sharpness' needs images of at least 3x3"):
        Sharpness()(torch.rand(1, 3, 2, 2), [""])


def test_gradient_ascent_raises_colorfulness():
    rm = Colorfulness()
    images = torch.full((2, 3, 8, 8), 0.5) + 0.01 * torch.randn(2, 3, 8, 8,
                                                                generator=torch.Generator().manual_seed(0))
    images.requires_grad_(True)
    before = rm(images, ["", ""]).detach()
    for _ in range(20):
        score = rm(images, ["", ""]).sum()
        (grad,) = torch.autograd.grad(score, images)
        with torch.no_grad():
            images += 0.01 * grad.sign()
            images.clamp_(0, 1)
    assert (rm(images, ["", ""]) > 3 * before).all()


def test_plugin_registers_both_models_through_the_hook(monkeypatch):
    # load the module in-process only, not also through its entry point (if installed)
    monkeypatch.setenv("REWARDKIT_LOAD_PLUGINS", "")
    host = load_host(extra_plugins=[("rewardkit-example-reward-inline", plugin_module)])
    info = host.plugins["rewardkit-example-reward-inline"]
    assert info.status == "ok", info.errors
    assert sorted(info.components["reward"]) == ["colorfulness", "sharpness"]
    spec = host.get("reward", "sharpness")
    assert {p.name: p.default for p in spec.params} == {"log": True, "eps": 1e-6}
    assert isinstance(spec.build(log=False), Sharpness)
