"""``draft`` and ``grpo`` on a flow teacher: a tiny SD3-architecture teacher built offline and a
student saved from it fine-tune a few steps (draft directly, with the LCD term against the flow
teacher, and through the LRM; grpo with LoRA and the KL term), resume bit for bit, and save a
``StableDiffusion3Pipeline`` that keeps its flow scheduler."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pytest
import torch

import rewardkit as rk
from rewardkit.flow_matching import FlowMatchProcess
from rewardkit.recipes.grpo import GRPORecipe
from rewardkit.rewards.base import RewardModel
from rewardkit.testing.recipe_contract import check_recipe
from rewardkit.testing.tiny_sd3 import build_tiny_sd3_pipeline
from rewardkit.training.metrics import read_metrics

SMALL_LRM = dict(embed_dim=16, image_widths=[8, 16], text_width=16, text_heads=2)


class Redness(RewardModel):
    name = "flow-tuning-redness"
    differentiable = True

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        channels = images.mean((2, 3))
        return channels[:, 0] - 0.5 * (channels[:, 1] + channels[:, 2])


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("flow-tuning")
    teacher = build_tiny_sd3_pipeline(root / "teacher", t5=False)
    backbone = rk.backbone("stable-diffusion-3", pretrained_model_name_or_path=str(teacher),
                           max_sequence_length=16)
    backbone.save_pipeline(backbone.build_student(), root / "student")
    prompts = root / "prompts.txt"
    prompts.write_text("a red circle\na blue square\na green triangle\na photo of a dog\n")
    return {"teacher": str(teacher), "student": str(root / "student"), "prompts": str(prompts)}


def values(assets: dict, **extra) -> dict:
    return {**dict(pretrained_teacher_model=assets["teacher"],
                   pretrained_student=assets["student"], backbone="stable-diffusion-3",
                   backbone_params={"max_sequence_length": 16},
                   train_shards_path_or_url=assets["prompts"], resolution=16, train_batch_size=2,
                   learning_rate=1e-3, seed=0, report_to="none", validation_steps=0,
                   checkpointing_steps=0, guidance_scale=1.0), **extra}


def _flow_pipeline(folder: Path) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(str(folder), text_encoder_3=None,
                                                    tokenizer_3=None)
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)


def _moved(recipe, folder: str) -> bool:
    from diffusers import SD3Transformer2DModel

    start = SD3Transformer2DModel.from_pretrained(folder, subfolder="transformer").state_dict()
    now = recipe.unwrapped_model.state_dict()
    return any(not torch.equal(now[name].float(), value.float()) for name, value in start.items()
               if name in now)


def test_draft_trains_a_flow_student_directly_with_the_lcd_term(assets, tmp_path):
    recipe = rk.recipe("draft", values(assets, output_dir=str(tmp_path), max_train_steps=2,
                                       sample_steps=2, grad_steps="last 2", lcd_weight=1.0,
                                       guidance_scale=3.0), reward=Redness())
    recipe.run(progress=False)
    assert isinstance(recipe.solver.schedule, FlowMatchProcess)  # the teacher's ODE is the flow's
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["lcd_loss"] > 0 and "reward_loss" in r for r in rows)
    assert _moved(recipe, assets["student"])
    _flow_pipeline(tmp_path / "pipeline")


def test_draft_trains_a_flow_student_through_the_lrm(assets, tmp_path):
    recipe = rk.recipe("draft", values(assets, output_dir=str(tmp_path), max_train_steps=2,
                                       reward="jpeg-compressibility", proxy="lrm",
                                       proxy_params=SMALL_LRM, proxy_lr=1e-3))
    recipe.run(progress=False)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert all({"reward", "proxy_loss", "expert_reward"} <= set(r) for r in rows)
    assert (tmp_path / "proxy" / "proxy.safetensors").is_file()
    _flow_pipeline(tmp_path / "pipeline")


def test_grpo_trains_a_flow_student_with_lora_and_the_kl_term(assets, tmp_path):
    recipe = rk.recipe("grpo", values(assets, output_dir=str(tmp_path), max_train_steps=2,
                                      reward="jpeg-compressibility", sample_steps=3,
                                      group_size=2, use_lora=True, lora_rank=4, kl_coef=0.1,
                                      clip_range=0.2))
    recipe.run(progress=False)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert all("policy_loss" in r and "kl_loss" in r for r in rows)
    assert rows[1]["kl_loss"] > 0  # the adapters moved away from the starting student
    _flow_pipeline(tmp_path / "pipeline")


def test_grpo_on_a_flow_student_resumes_bit_exactly(assets, tmp_path):
    passed = check_recipe(GRPORecipe, values(assets, reward="jpeg-compressibility",
                                             sample_steps=2, group_size=2,
                                             updates_per_rollout=2), tmp_path, processes=False)
    assert passed == ["resume", "no_pickles", "non_finite"]
