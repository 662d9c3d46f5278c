"""The ``grpo`` recipe and the consistency sampler as a policy, on a tiny teacher and a tiny
distilled student, offline: the rollout is the sampler's chain bit for bit, each step's
log-probability is the closed-form Gaussian density around diffusers' own ``denoised`` (and, for a
flow teacher, around ``FlowMatchLCMScheduler``'s x0 with its re-noising ``(1 - s) x0 + s eps``), the
clipped objective's gradient matches a hand-computed case, group advantages, LoRA with the KL
term, a non-differentiable RM trains the student, and the recipe contract holds."""

from __future__ import annotations

import math
import threading
import time

import pytest
import torch

import rewardkit as rk
from rewardkit.consistency_policy import ConsistencyChain, rollout, step_log_prob
from rewardkit.errors import ConfigError
from rewardkit.plugins import get_host
from rewardkit.recipes.grpo import GRPORecipe, clipped_surrogate, group_advantages
from rewardkit.recipes.lcd import LCDRecipe
from rewardkit.rewards.base import RewardModel
from rewardkit.sampling_grad import guidance_input, sample_consistency
from rewardkit.testing.recipe_contract import check_recipe
from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline
from rewardkit.testing.tiny_sd3 import build_tiny_sd3_pipeline
from rewardkit.testing.tiny_training import tiny_lcd_config, write_tiny_image_folder
from rewardkit.training.metrics import read_metrics


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpo")
    teacher = build_tiny_sd_pipeline(root / "teacher")
    data = write_tiny_image_folder(root / "data", count=4, size=16)
    LCDRecipe(tiny_lcd_config(teacher, data, root / "lcd", max_train_steps=1)).run(progress=False)
    prompts = root / "prompts.txt"
    prompts.write_text("a red circle\na blue square\na green triangle\na photo of a dog\n")
    return {"teacher": str(teacher), "student": str(root / "lcd" / "pipeline"),
            "prompts": str(prompts)}


@pytest.fixture(scope="module")
def policy(assets):
    backbone = get_host().get("backbone", "stable-diffusion").build(
        pretrained_model_name_or_path=assets["teacher"], dtype="float32", device="cpu")
    student = backbone.load_student(assets["student"])
    cond = backbone.encode_prompts(["a red circle", "a photo of a dog"]).float()
    return backbone, student, cond


def values(assets, **extra) -> dict:
    return {**dict(pretrained_teacher_model=assets["teacher"], pretrained_student=assets["student"],
                   train_shards_path_or_url=assets["prompts"], resolution=16, train_batch_size=2,
                   learning_rate=1e-4, seed=0, report_to="none", validation_steps=0,
                   checkpointing_steps=0, reward="jpeg-compressibility", sample_steps=3,
                   group_size=2), **extra}


def test_the_rollout_is_the_samplers_chain_bit_for_bit(policy):
    backbone, student, cond = policy
    expected = sample_consistency(backbone, student, cond, steps=3, latent_size=8,
                                  generator=torch.Generator().manual_seed(5))
    chain = ConsistencyChain(backbone, 3)
    samples = rollout(backbone, student, cond, chain, generator=torch.Generator().manual_seed(5),
                      time_cond_proj_dim=student.config.time_cond_proj_dim, latent_size=8)
    assert torch.equal(samples.x0, expected)
    assert samples.latents.shape == samples.next_latents.shape == (2, 2, 4, 8, 8)
    assert torch.equal(samples.latents[1], samples.next_latents[0])


def test_a_steps_log_prob_is_the_closed_form_gaussian_around_diffusers_denoised(policy):
    backbone, student, cond = policy
    dim = student.config.time_cond_proj_dim
    chain = ConsistencyChain(backbone, 3)
    samples = rollout(backbone, student, cond, chain, generator=torch.Generator().manual_seed(1),
                      time_cond_proj_dim=dim, latent_size=8)
    scheduler = backbone.lcm_scheduler()
    scheduler.set_timesteps(3, original_inference_steps=50)
    w = guidance_input(7.5, dim, 2, "cpu", torch.float32)
    for index in range(2):
        t = scheduler.timesteps[index]
        z = samples.latents[index]
        out = backbone.predict(student, z, t.expand(2), cond, w)
        scheduler._step_index = index  # diffusers' own step, at this index
        _, denoised = scheduler.step(out, t, z, generator=torch.Generator().manual_seed(9),
                                     return_dict=False)
        abar = scheduler.alphas_cumprod[scheduler.timesteps[index + 1]]
        density = torch.distributions.Normal(abar.sqrt() * denoised, (1 - abar).sqrt())
        closed_form = density.log_prob(samples.next_latents[index]).flatten(1).sum(1)
        torch.testing.assert_close(samples.log_probs[index], closed_form, rtol=1e-5, atol=1e-3)
        again, _ = step_log_prob(backbone, student, cond, chain, index, z,
                                 samples.next_latents[index], time_cond_proj_dim=dim)
        torch.testing.assert_close(again, samples.log_probs[index], rtol=0, atol=1e-4)
        assert again.requires_grad


@pytest.fixture(scope="module")
def flow_policy(tmp_path_factory):
    teacher = build_tiny_sd3_pipeline(tmp_path_factory.mktemp("grpo-flow") / "sd3", t5=False)
    backbone = rk.backbone("stable-diffusion-3", pretrained_model_name_or_path=str(teacher),
                           max_sequence_length=16)
    torch.manual_seed(0)
    student = backbone.build_student()
    with torch.no_grad():  # a student that is not the teacher: v differs at every step
        for param in student.parameters():
            param.add_(0.05 * torch.randn_like(param))
    cond = backbone.encode_prompts(["a red circle", "a photo of a dog"]).float()
    return backbone, student, cond


def test_a_flow_rollout_is_flow_match_lcm_and_its_log_prob_the_closed_form_gaussian(flow_policy):
    """Written from the equations: d = z - s v, z' = (1 - s') d + s' eps, so
    log pi(z' | z) = log N(z'; (1 - s') d, s'^2 I), on the scheduler's own sigmas."""
    from diffusers import FlowMatchLCMScheduler

    backbone, student, cond = flow_policy
    chain = ConsistencyChain(backbone, 3)
    samples = rollout(backbone, student, cond, chain, generator=torch.Generator().manual_seed(3),
                      time_cond_proj_dim=None, latent_size=8)
    assert samples.latents.shape == (2, 2, 16, 8, 8)
    # diffusers' stochastic flow consistency sampler, same noise: the same chain
    lcm = FlowMatchLCMScheduler.from_config(backbone.noise_scheduler.config)
    lcm.set_timesteps(3)
    generator = torch.Generator().manual_seed(3)
    z = torch.randn((2, 16, 8, 8), generator=generator)
    for t in lcm.timesteps:
        z = lcm.step(backbone.predict(student, z, t.expand(2), cond), t, z, generator=generator,
                     return_dict=False)[0]
    torch.testing.assert_close(samples.x0, z, rtol=1e-5, atol=1e-5)
    sigmas = lcm.sigmas.double()
    for index in range(2):
        z, z_next = samples.latents[index], samples.next_latents[index]
        t = lcm.timesteps[index]
        v = backbone.predict(student, z, t.expand(2), cond).double()
        d = z.double() - sigmas[index] * v
        s_next = sigmas[index + 1]
        density = torch.distributions.Normal((1 - s_next) * d, s_next)
        closed_form = density.log_prob(z_next.double()).flatten(1).sum(1)
        torch.testing.assert_close(samples.log_probs[index].double(), closed_form, rtol=1e-5,
                                   atol=1e-2)
        again, _ = step_log_prob(backbone, student, cond, chain, index, z, z_next,
                                 time_cond_proj_dim=None)
        torch.testing.assert_close(again, samples.log_probs[index], rtol=0, atol=1e-3)
        assert again.requires_grad


def test_the_clipped_objectives_gradient_matches_a_hand_computed_case():
    old = torch.zeros(4)
    # ratios exp(.): 1.5 (A>0: clipped at 1.2), 0.5 (A>0: not clipped), 1.5 (A<0: not
    # clipped), 0.5 (A<0: clipped at 0.8)
    log_prob = torch.log(torch.tensor([1.5, 0.5, 1.5, 0.5])).requires_grad_(True)
    advantages = torch.tensor([1.0, 2.0, -1.0, -2.0])
    loss, fraction = clipped_surrogate(log_prob, old, advantages, clip_range=0.2)
    loss.backward()
    # d/dlogp of -A * ratio is -A * ratio where the unclipped term is the max, 0 where clipped
    expected = torch.tensor([0.0, -2.0 * 0.5, 1.0 * 1.5, 0.0]) / 4
    torch.testing.assert_close(log_prob.grad, expected)
    assert math.isclose(loss.item(), (-1.2 - 1.0 + 1.5 + 1.6) / 4, rel_tol=1e-6)
    assert fraction.item() == 0.5


def test_group_advantages_are_relative_to_each_prompts_group():
    rewards = torch.tensor([1.0, 3.0, 10.0, 10.0, 0.0, 4.0])
    advantages = group_advantages(rewards, group_size=2, clip=5.0)
    torch.testing.assert_close(advantages[:2], torch.tensor([-1.0, 1.0]) / math.sqrt(2),
                               rtol=1e-4, atol=1e-4)
    assert torch.equal(advantages[2:4], torch.zeros(2))  # a tie: no signal
    assert group_advantages(torch.tensor([0.0, 1e6]), 2, clip=0.5).abs().max() == 0.5


def test_bad_values_are_refused_naming_the_key(assets, tmp_path):
    for key, value, message in [("sample_steps", 1, "sample_steps must be at least 2"),
                                ("group_size", 1, "group_size must be at least 2"),
                                ("timestep_fraction", 0.0, "timestep_fraction")]:
        with pytest.raises(ConfigError, match=message):
            rk.recipe("grpo", {**values(assets, output_dir=str(tmp_path)), key: value})


def test_a_non_differentiable_rm_trains_the_student_with_lora_and_the_kl_term(assets, tmp_path):
    recipe = rk.recipe("grpo", values(assets, output_dir=str(tmp_path), max_train_steps=3,
                                      use_lora=True, lora_rank=4, kl_coef=0.1,
                                      updates_per_rollout=2, clip_range=0.2))
    recipe.run(progress=False)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all({"reward", "reward_std", "policy_loss", "kl_loss", "clip_fraction"} <= set(r)
               for r in rows)
    assert rows[0]["kl_loss"] == 0.0 and rows[1]["kl_loss"] > 0.0  # theta moved off theta_ref
    assert rows[1]["reward"] == rows[0]["reward"]  # step 2 reuses step 1's rollout
    names = [n for n, p in recipe.unwrapped_model.named_parameters() if p.requires_grad]
    assert names and all("lora" in n or "cond_proj" in n for n in names)
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(tmp_path / "pipeline"))
    assert type(pipe.scheduler).__name__ == "LCMScheduler"


def test_grpo_keeps_the_recipe_contract(assets, tmp_path):
    passed = check_recipe(GRPORecipe, values(assets, updates_per_rollout=2), tmp_path)
    assert passed == ["resume", "no_pickles", "non_finite", "two_processes"]


class SlowHostJudge(RewardModel):
    """A host-side RM that takes a while per call and records when and in which thread it ran."""

    name = "test-slow-host-judge"
    differentiable = False

    def __init__(self, nan: bool = False) -> None:
        self.calls: list[tuple[float, float, str]] = []
        self.nan = nan

    def score(self, images, prompts):
        started = time.perf_counter()
        time.sleep(0.3)
        self.calls.append((started, time.perf_counter(), threading.current_thread().name))
        scores = images.mean((1, 2, 3))
        return scores * float("nan") if self.nan else scores


def test_rollout_chunks_score_one_chunk_while_the_next_samples(assets, tmp_path):
    """``rollout_chunks=2``: the RM scores the first chunk in a background thread while the
    student samples the second; the rollout has every row, in order."""
    judge = SlowHostJudge()
    recipe = rk.recipe("grpo", values(assets, output_dir=str(tmp_path), max_train_steps=1,
                                      train_batch_size=4, rollout_chunks=2), reward=judge)
    recipe.setup()
    unet_calls: list[float] = []
    handle = recipe.unwrapped_model.register_forward_hook(
        lambda *_: unet_calls.append(time.perf_counter()))
    try:
        recipe.collect(["a red circle", "a blue square", "a green triangle", "a dog"])
    finally:
        handle.remove()
    assert len(judge.calls) == 2 and all(t != "MainThread" for _, _, t in judge.calls)
    first_started, first_ended, _ = judge.calls[0]
    assert any(first_started < t < first_ended for t in unet_calls)  # overlapped
    data = recipe.data
    assert data["latents"].shape[:2] == (2, 8) and data["rewards"].shape == (8,)
    assert data["captions"][:2] == ["a red circle"] * 2


def test_a_nan_from_a_chunk_scored_in_the_background_stops_the_run_naming_the_rm(assets, tmp_path):
    recipe = rk.recipe("grpo", values(assets, output_dir=str(tmp_path), max_train_steps=2,
                                      train_batch_size=4, rollout_chunks=2),
                       reward=SlowHostJudge(nan=True))
    with pytest.raises(Exception, match="test-slow-host-judge"):
        recipe.run(progress=False)
