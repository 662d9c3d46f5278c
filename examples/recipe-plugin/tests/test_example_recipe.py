"""Tests of the example plugin: the recipe contract, the weights, registration, a bad value.

Run from this folder with ``python -m pytest`` once the plugin and rewardkit are installed
(``pip install -e . --no-deps`` in a rewardkit environment).
"""

from __future__ import annotations

import math

import pytest
import torch

import rewardkit as rk
from rewardkit.errors import ConfigError
from rewardkit.testing.recipe_contract import check_recipe
from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline
from rewardkit.training.metrics import read_metrics
from rewardkit.testing.tiny_training import write_tiny_image_folder
from rewardkit_example_recipe import RWRConfig, RWRRecipe
from rewardkit_example_recipe.rwr import reward_weights


@pytest.fixture(scope="module")
def values(tmp_path_factory):
    root = tmp_path_factory.mktemp("rwr")
    return dict(pretrained_teacher_model=str(build_tiny_sd_pipeline(root / "teacher")),
                train_shards_path_or_url=str(write_tiny_image_folder(root / "data", count=8,
                                                                     size=16)),
                resolution=16, train_batch_size=4, learning_rate=1e-3, seed=0, report_to="none",
                validation_steps=0)


def test_meets_the_recipe_contract(values, tmp_path):
    assert check_recipe(RWRRecipe, values, tmp_path) == [
        "resume", "no_pickles", "non_finite", "two_processes"]


def test_weights_have_mean_one_and_follow_the_rewards():
    rewards = torch.tensor([0.1, 0.5, 0.3, 0.2])
    weights = reward_weights(rewards, temperature=0.1)
    assert torch.allclose(weights.mean(), torch.tensor(1.0))
    assert weights.argsort().tolist() == rewards.argsort().tolist()
    flat = reward_weights(rewards, temperature=1e6)
    assert torch.allclose(flat, torch.ones(4), atol=1e-4)  # a huge temperature: plain regression


def test_runs_by_name_and_logs_its_loss_and_reward(values, tmp_path):
    recipe = rk.recipe("rwr", {**values, "output_dir": str(tmp_path), "max_train_steps": 2,
                               "checkpointing_steps": 0})
    assert isinstance(recipe, RWRRecipe)
    recipe.run(progress=False)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["rwr_loss"] > 0 and math.isfinite(r["reward"]) for r in rows)
    assert (tmp_path / "model.safetensors").is_file()


def test_a_bad_temperature_is_named(values, tmp_path):
    with pytest.raises(ConfigError, match="temperature must be positive"):
        RWRConfig(**{**values, "output_dir": str(tmp_path), "temperature": 0}).validate()
