"""``sample_consistency``: the few-step LCM sampler that keeps gradients through chosen steps.

It must sample exactly what the no-grad sampler of validation (``sample_lcm_latents``) and a
diffusers pipeline with ``LCMScheduler`` sample from the same UNet and seed, and a reward's
gradient must reach the UNet only through the steps asked for."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import rewardkit
from rewardkit.backbones.stable_diffusion import StableDiffusionBackbone
from rewardkit.errors import ConfigError
from rewardkit.sampling import resolve_grad_steps, sample_consistency
from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline
from rewardkit.sampling import sample_lcm_latents

DIM = 32
PROMPTS = ["a photo of a red circle", "a blue square"]


@pytest.fixture(scope="module", params=("epsilon", "v_prediction"))
def backbone(request, tmp_path_factory) -> StableDiffusionBackbone:
    root = tmp_path_factory.mktemp(request.param)
    return StableDiffusionBackbone(str(build_tiny_sd_pipeline(root / "teacher",
                                                              prediction_type=request.param)))


@pytest.fixture(scope="module")
def student(backbone) -> torch.nn.Module:
    """A w-conditioned student whose guidance embedding matters (it is random, not zero)."""
    unet = backbone.build_student(time_cond_proj_dim=DIM)
    with torch.no_grad():
        unet.time_embedding.cond_proj.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    return unet


@pytest.fixture(scope="module")
def cond(backbone):
    return backbone.encode_prompts(PROMPTS)


def redness(images: torch.Tensor) -> torch.Tensor:
    channels = images.mean((2, 3))
    return channels[:, 0] - 0.5 * (channels[:, 1] + channels[:, 2])


def _reward_grads(backbone, unet, cond, **kwargs) -> dict[str, torch.Tensor]:
    unet.zero_grad(set_to_none=True)
    x0 = sample_consistency(backbone, unet, cond, generator=3, **kwargs)
    if x0.requires_grad:
        (-redness(backbone.decode_latents(x0)).sum()).backward()
    return {n: p.grad.clone() for n, p in unet.named_parameters() if p.grad is not None}


# ---------------------------------------------------------------- the same numbers


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_it_samples_exactly_what_the_no_grad_sampler_samples(backbone, student, cond, steps):
    expected = sample_lcm_latents(backbone, student, cond, steps=steps, seed=11, guidance_scale=7.5,
                                  time_cond_proj_dim=DIM)
    for grad_steps in (None, "last 1", "all"):
        for checkpointing in (False, True):
            got = sample_consistency(backbone, student, cond, steps=steps, guidance_scale=7.5,
                                     grad_steps=grad_steps, generator=torch.Generator().manual_seed(11),
                                     gradient_checkpointing=checkpointing)
            assert torch.equal(got.detach(), expected), (grad_steps, checkpointing)
            assert got.requires_grad == (grad_steps is not None)
    # an int seed is a fresh CPU generator; another seed gives other samples
    assert torch.equal(sample_consistency(backbone, student, cond, steps=steps, generator=11), expected)
    assert not torch.equal(sample_consistency(backbone, student, cond, steps=steps, generator=12),
                           expected)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_it_samples_what_a_diffusers_lcm_pipeline_samples(backbone, student, cond, steps):
    pipe = backbone.pipeline(student, backbone.lcm_scheduler())
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        expected = pipe(prompt_embeds=cond.prompt_embeds, num_inference_steps=steps,
                        guidance_scale=7.5, generator=torch.Generator().manual_seed(5),
                        output_type="latent").images
    got = sample_consistency(backbone, student, cond, steps=steps, guidance_scale=7.5,
                             grad_steps="all", generator=torch.Generator().manual_seed(5))
    assert torch.equal(got.detach(), expected)


def test_given_latents_are_the_initial_noise(backbone, student, cond):
    generator = torch.Generator().manual_seed(2)
    noise = torch.randn(2, 4, 8, 8, generator=generator)  # what the sampler would draw first
    given = sample_consistency(backbone, student, cond, steps=2, latents=noise, generator=generator)
    assert torch.equal(given, sample_consistency(backbone, student, cond, steps=2, generator=2))
    with pytest.raises(ConfigError, match="latents have batch 1, the conditioning 2"):
        sample_consistency(backbone, student, cond, latents=noise[:1])


# ---------------------------------------------------------------- gradients


def test_a_reward_reaches_the_unet_only_through_the_chosen_steps(backbone, student, cond):
    calls: list[bool] = []
    handle = student.register_forward_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    try:
        last = _reward_grads(backbone, student, cond, steps=4, grad_steps="last 1")
        assert calls == [False, False, False, True]
        calls.clear()
        none = _reward_grads(backbone, student, cond, steps=4, grad_steps=None)
        assert calls == [False] * 4
        calls.clear()
        two = _reward_grads(backbone, student, cond, steps=4, grad_steps=(-2, -1))
        assert calls == [False, False, True, True]
    finally:
        handle.remove()
    assert none == {}  # no graph, no gradient anywhere
    assert last and any(g.abs().sum() > 0 for g in last.values())
    assert "time_embedding.cond_proj.weight" in last  # through the guidance embedding too
    assert any(not torch.equal(last[n], two[n]) for n in last)  # more steps, other gradient


def test_gradient_checkpointing_gives_the_same_gradient(backbone, student, cond):
    plain = _reward_grads(backbone, student, cond, steps=2, grad_steps="all")
    checkpointed = _reward_grads(backbone, student, cond, steps=2, grad_steps="all",
                                 gradient_checkpointing=True)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7)


def test_a_lora_student_gets_gradients_on_its_adapters_only(backbone, cond):
    student = backbone.add_lora(backbone.build_student(time_cond_proj_dim=DIM), rank=4)
    grads = _reward_grads(backbone, student, cond, steps=2, grad_steps="last 1")
    assert grads and set(grads) == {n for n, p in student.named_parameters() if p.requires_grad}
    assert all(".lora_" in n or "cond_proj" in n for n in grads)


def test_a_gradient_reaches_latents_that_ask_for_one(backbone, student, cond):
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2), requires_grad=True)
    sample_consistency(backbone, student, cond, steps=2, latents=noise, grad_steps="all",
                       generator=1).sum().backward()
    assert noise.grad is not None and noise.grad.abs().sum() > 0


# ---------------------------------------------------------------- choosing steps


def test_grad_steps_spellings_and_refusals():
    assert resolve_grad_steps(None, 4) == resolve_grad_steps((), 4) == resolve_grad_steps("none", 4) == ()
    assert resolve_grad_steps("all", 3) == (0, 1, 2)
    assert resolve_grad_steps("last 2", 4) == resolve_grad_steps((-2, 3), 4) == (2, 3)
    assert resolve_grad_steps(1, 2) == resolve_grad_steps((1,), 2) == (1,)
    with pytest.raises(ConfigError, match=r"steps \[0\] of a 2-step chain are not its last ones"):
        resolve_grad_steps((0,), 2)
    with pytest.raises(ConfigError, match="'last 5' of a 4-step chain"):
        resolve_grad_steps("last 5", 4)
    with pytest.raises(ConfigError, match="4 is not a step index of a 4-step chain"):
        resolve_grad_steps((4,), 4)
    with pytest.raises(ConfigError, match="'first 2' is not"):
        resolve_grad_steps("first 2", 4)
    with pytest.raises(ConfigError, match="steps must be a positive integer"):
        resolve_grad_steps("all", 0)


def test_it_is_exported_where_samplers_are():
    assert rewardkit.sample_consistency is sample_consistency
    assert "sample_consistency" in rewardkit.__all__


def test_sdxl_conditioning_samples_the_same(tmp_path):
    from rewardkit.backbones.stable_diffusion_xl import StableDiffusionXLBackbone
    from rewardkit.testing.tiny_sdxl import build_tiny_sdxl_pipeline

    backbone = StableDiffusionXLBackbone(str(build_tiny_sdxl_pipeline(Path(tmp_path) / "sdxl")))
    student = backbone.build_student(time_cond_proj_dim=DIM)
    cond = backbone.encode_prompts(PROMPTS)
    expected = sample_lcm_latents(backbone, student, cond, steps=2, seed=4, guidance_scale=5.0,
                                  time_cond_proj_dim=DIM)
    got = sample_consistency(backbone, student, cond, steps=2, guidance_scale=5.0,
                             grad_steps="last 1", generator=4)
    assert torch.equal(got.detach(), expected)
    assert _reward_grads(backbone, student, cond, steps=2, grad_steps="last 1")


def test_a_chain_stopped_early_returns_that_steps_x0_prediction(backbone, student, cond):
    """``stop_after=k``: the first k steps of the S-step chain. Its first step is the 1-step
    chain's (same first timestep, same noise); stopping at S is the whole chain; the gradient
    goes through the step it stops at."""
    one = sample_consistency(backbone, student, cond, steps=1, generator=5)
    assert torch.equal(sample_consistency(backbone, student, cond, steps=4, generator=5,
                                          stop_after=1), one)
    whole = sample_consistency(backbone, student, cond, steps=4, generator=5)
    assert torch.equal(sample_consistency(backbone, student, cond, steps=4, generator=5,
                                          stop_after=4), whole)
    calls: list[bool] = []
    handle = student.register_forward_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    try:
        two = sample_consistency(backbone, student, cond, steps=4, generator=5, stop_after=2,
                                 grad_steps="last 1")
    finally:
        handle.remove()
    assert calls == [False, True] and two.requires_grad
    assert not torch.equal(two.detach(), whole)
    for bad in (0, 5):
        with pytest.raises(ConfigError, match="stop_after"):
            sample_consistency(backbone, student, cond, steps=4, generator=5, stop_after=bad)
