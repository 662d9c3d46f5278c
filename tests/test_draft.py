"""The ``draft`` recipe (DRaFT-K) on a tiny teacher and a tiny distilled student, offline: the
reward's gradient reaches only the last K sampling steps, a non-differentiable RM is refused in
direct mode and drives training through the proxy, LoRA, the L2 regulariser, the pipeline it
saves, and the recipe contract (exact resume, no pickles, NaN stop, two processes)."""

from __future__ import annotations

import pytest
import torch

import rewardkit as rk
from rewardkit.errors import ConfigError
from rewardkit.recipes.draft import DraftRecipe
from rewardkit.recipes.lcd import LCDRecipe
from rewardkit.rewards.base import RewardModel
from rewardkit.testing.recipe_contract import check_recipe
from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline
from rewardkit.testing.tiny_training import tiny_lcd_config, write_tiny_image_folder
from rewardkit.training.metrics import read_metrics

SMALL_LRM = dict(embed_dim=16, image_widths=[8, 16], text_width=16, text_heads=2)


class Redness(RewardModel):
    """A differentiable RM without weights: red minus the other channels."""

    name = "redness"
    differentiable = True

    def score(self, images, prompts):
        channels = images.mean((2, 3))
        return channels[:, 0] - 0.5 * (channels[:, 1] + channels[:, 2])


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("draft")
    teacher = build_tiny_sd_pipeline(root / "teacher")
    data = write_tiny_image_folder(root / "data", count=4, size=16)
    LCDRecipe(tiny_lcd_config(teacher, data, root / "lcd", max_train_steps=1)).run(progress=False)
    prompts = root / "prompts.txt"
    prompts.write_text("a red circle\na blue square\na green triangle\na photo of a dog\n")
    return {"teacher": str(teacher), "student": str(root / "lcd" / "pipeline"),
            "prompts": str(prompts)}


def values(assets, **extra) -> dict:
    return dict(pretrained_teacher_model=assets["teacher"], pretrained_student=assets["student"],
                train_shards_path_or_url=assets["prompts"], resolution=16, train_batch_size=2,
                learning_rate=1e-3, seed=0, report_to="none", validation_steps=0,
                checkpointing_steps=0, **extra)


def unet_calls_with_grad(recipe) -> list[bool]:
    """Whether autograd was on in each student UNet call of one ``losses`` call."""
    calls: list[bool] = []
    handle = recipe.unwrapped_model.register_forward_hook(
        lambda *_: calls.append(torch.is_grad_enabled()))
    try:
        terms = recipe.losses(next(recipe.batches))
    finally:
        handle.remove()
    sum(terms.values()).backward()
    return calls


@pytest.mark.parametrize("grad_steps, expected", [("last 1", [False, False, True]),
                                                  ("last 2", [False, True, True]),
                                                  ("all", [True, True, True])])
def test_the_gradient_reaches_only_the_last_k_steps(assets, tmp_path, grad_steps, expected):
    recipe = rk.recipe("draft", values(assets, output_dir=str(tmp_path), max_train_steps=1,
                                       sample_steps=3, grad_steps=grad_steps), reward=Redness())
    recipe.setup()
    assert unet_calls_with_grad(recipe) == expected
    grads = [p.grad for p in recipe.optimizer_parameters(recipe.unwrapped_model)]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_a_grad_step_choice_that_reaches_nothing_is_refused(assets, tmp_path):
    with pytest.raises(ConfigError, match="grad_steps"):
        rk.recipe("draft", values(assets, output_dir=str(tmp_path), sample_steps=2,
                                  grad_steps="last 3", reward="jpeg-compressibility",
                                  proxy="lrm"))


def test_direct_mode_refuses_a_non_differentiable_rm(assets, tmp_path):
    with pytest.raises(ConfigError, match="jpeg-compressibility' is not differentiable.*proxy=lrm"):
        rk.recipe("draft", values(assets, output_dir=str(tmp_path),
                                  reward="jpeg-compressibility", proxy="none"))
    with pytest.raises(ConfigError, match="pretrained_student is required"):
        rk.recipe("draft", {**values(assets, output_dir=str(tmp_path), proxy="lrm",
                                     reward="jpeg-compressibility"), "pretrained_student": None})


def test_a_non_differentiable_rm_trains_the_student_through_the_proxy(assets, tmp_path):
    recipe = rk.recipe("draft", values(assets, output_dir=str(tmp_path), max_train_steps=3,
                                       reward="jpeg-compressibility", proxy="lrm",
                                       proxy_params=SMALL_LRM, proxy_lr=1e-3))
    recipe.run(progress=False)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        assert {"reward", "reward_loss", "proxy_loss", "proxy_accuracy", "expert_reward"} <= set(row)
    assert (tmp_path / "proxy" / "proxy.safetensors").is_file()
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(tmp_path / "pipeline"))
    assert type(pipe.scheduler).__name__ == "LCMScheduler"


def test_direct_mode_with_lora_and_the_l2_regulariser(assets, tmp_path):
    recipe = rk.recipe("draft", values(assets, output_dir=str(tmp_path), max_train_steps=2,
                                       use_lora=True, lora_rank=4, init_l2=10.0),
                       reward=Redness())
    recipe.run(progress=False)
    trained = recipe.optimizer_parameters(recipe.unwrapped_model)
    names = [n for n, p in recipe.unwrapped_model.named_parameters() if p.requires_grad]
    assert names and all("lora" in n or "cond_proj" in n for n in names)
    assert len(trained) == len(names)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert rows[0]["init_l2_loss"] == 0.0  # theta = theta_0 before the first step
    assert rows[1]["init_l2_loss"] > 0.0
    assert (tmp_path / "pipeline").is_dir()


def test_draft_keeps_the_recipe_contract(assets, tmp_path):
    passed = check_recipe(DraftRecipe, values(assets, reward="jpeg-compressibility",
                                              proxy="lrm", proxy_params=SMALL_LRM,
                                              proxy_lr=1e-3), tmp_path)
    assert passed == ["resume", "no_pickles", "non_finite", "two_processes"]


def test_direct_mode_raises_the_reward(assets, tmp_path):
    """The sign check: following -beta * r makes the students' samples redder."""
    recipe = rk.recipe("draft", values(assets, output_dir=str(tmp_path), max_train_steps=12),
                       reward=Redness())
    recipe.run(progress=False)
    rewards = [r["reward"] for r in read_metrics(tmp_path / "metrics.jsonl")]
    assert sum(rewards[-4:]) / 4 > 1.5 * sum(rewards[:4]) / 4


@pytest.mark.parametrize("name", ["sd21-hpsv21.toml", "sdxl-lora-imagereward-lrm.toml"])
def test_the_example_configs_load(name):
    from pathlib import Path

    from rewardkit.config import load_config
    from rewardkit.recipes.draft_config import DraftConfig

    path = Path(__file__).resolve().parents[1] / "examples" / "configs" / "draft" / name
    config = load_config(DraftConfig, path, validate=False)  # plugins and weights are not here
    assert config.pretrained_student.endswith("/pipeline")
    assert config.grad_steps == "last 1" and config.sample_steps == 2
    assert (config.proxy == "none") == (config.reward == "hpsv2")


def test_random_stop_is_refl_a_random_step_with_the_gradient_through_it_only(assets, tmp_path):
    """``random_stop``: each step's chain stops at k ~ U{1..S} (logged as ``stop_step``, drawn
    from the run's generator); only the UNet call of step k keeps its graph."""
    recipe = rk.recipe("draft", values(assets, output_dir=str(tmp_path), max_train_steps=1,
                                       sample_steps=4, random_stop=True), reward=Redness())
    recipe.setup()
    stops = []
    for _ in range(12):
        calls = unet_calls_with_grad(recipe)
        stops.append(recipe.stop)
        assert len(calls) == recipe.stop and calls == [False] * (recipe.stop - 1) + [True]
    assert set(stops) == {1, 2, 3, 4}
    with pytest.raises(ConfigError, match="random_stop takes grad_steps 'last 1'"):
        rk.recipe("draft", values(assets, output_dir=str(tmp_path / "b"), sample_steps=4,
                                  random_stop=True, grad_steps="last 2"))


def test_the_lcd_regulariser_runs_the_teacher_on_the_students_own_samples(assets, tmp_path):
    """``lcd_weight``: an ``lcd_loss`` term (weight x L_LCD, z0 = the batch's samples detached)
    that calls the teacher and sends a gradient to the student; off, the teacher never runs."""
    def teacher_calls(recipe) -> int:
        calls: list[int] = []
        handle = recipe.backbone.unet.register_forward_hook(lambda *_: calls.append(1))
        try:
            terms = recipe.losses(next(recipe.batches))
        finally:
            handle.remove()
        return len(calls), terms

    on = rk.recipe("draft", values(assets, output_dir=str(tmp_path / "on"), max_train_steps=1,
                                   lcd_weight=2.0), reward=Redness())
    on.setup()
    calls, terms = teacher_calls(on)
    assert calls == 1 and terms["lcd_loss"] > 0  # one batched [c; empty] teacher call
    terms["lcd_loss"].backward()
    grads = [p.grad for p in on.optimizer_parameters(on.unwrapped_model)]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    off = rk.recipe("draft", values(assets, output_dir=str(tmp_path / "off"), max_train_steps=1),
                    reward=Redness())
    off.setup()
    calls, terms = teacher_calls(off)
    assert calls == 0 and "lcd_loss" not in terms
