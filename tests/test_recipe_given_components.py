"""Recipes composed from built objects in Python: ``rk.recipe("rg-lcd", reward=my_rm)``."""

from __future__ import annotations

import dataclasses
import json
from typing import Sequence

import pytest
import torch

import rewardkit as rk
from rewardkit.errors import ConfigError
from rewardkit.proxies import LatentRewardModel
from rewardkit.rewards.base import RewardModel
from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline
from rewardkit.recipes.lcd_config import LCDConfig
from rewardkit.training.metrics import read_metrics
from rewardkit.testing.tiny_training import tiny_lcd_config, write_tiny_image_folder

SMALL_LRM = dict(embed_dim=16, image_widths=[8, 16], text_width=16, text_heads=2)


class MyOwnRM(RewardModel):
    """Registered by no plugin: only reachable as a built object."""

    name = "my-own-rm"
    differentiable = True

    def __init__(self) -> None:
        self.calls = 0

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        self.calls += 1
        return images[:, 0].mean((1, 2)) - images[:, 2].mean((1, 2))


@pytest.fixture(scope="module")
def values(tmp_path_factory):
    root = tmp_path_factory.mktemp("given")
    teacher = build_tiny_sd_pipeline(root / "teacher")
    data = write_tiny_image_folder(root / "data", count=8, size=16)
    base = dataclasses.asdict(tiny_lcd_config(teacher, data, root / "unused"))
    return {**base, "proxy_batch_size": 2, "vae_decode_batch_size": 4, "proxy_eval_num_prompts": 0,
            "max_train_steps": 2}


def test_a_built_unregistered_reward_model_trains_rg_lcd(values, tmp_path):
    rm = MyOwnRM()
    recipe = rk.recipe("rg-lcd", {**values, "output_dir": str(tmp_path)}, reward=rm, proxy="none")
    out = recipe.run(progress=False)
    assert recipe.reward_model is rm and rm.calls >= 2  # the very object, used every step
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2]
    assert json.loads((out / "config.json").read_text())["reward"] == "my-own-rm"


def test_a_built_proxy_and_solver_are_used_as_they_are(values, tmp_path):
    proxy = LatentRewardModel(latent_channels=4, text_dim=32, **SMALL_LRM)
    solver = rk.solver("heun", alphas_cumprod=_teacher_alphas(values), num_ddim_timesteps=50)
    recipe = rk.recipe("rg-lcd", {**values, "output_dir": str(tmp_path)}, reward=MyOwnRM(),
                       proxy=proxy, solver=solver)
    recipe.run(progress=False)
    assert recipe.proxy_model is proxy and recipe.solver is solver
    before = {n: p.detach().clone() for n, p in LatentRewardModel(
        latent_channels=4, text_dim=32, **SMALL_LRM).named_parameters()}
    assert any(not torch.equal(before[n], p) for n, p in proxy.named_parameters())  # trained online


def test_lcd_takes_a_built_solver_and_checks_it_fits_the_teacher(values, tmp_path):
    values = {k: v for k, v in values.items() if k in {f.name for f in dataclasses.fields(LCDConfig)}}
    alphas = _teacher_alphas(values)
    wrong_grid = rk.solver("ddim", alphas_cumprod=alphas, num_ddim_timesteps=25)
    with pytest.raises(ConfigError, match="num_ddim_timesteps 25"):
        rk.recipe("lcd", {**values, "output_dir": str(tmp_path / "a")}, solver=wrong_grid).run(progress=False)
    wrong_schedule = rk.solver("ddim", alphas_cumprod=alphas.flip(0), num_ddim_timesteps=50)
    with pytest.raises(ConfigError, match="not the teacher's noise schedule"):
        rk.recipe("lcd", {**values, "output_dir": str(tmp_path / "b")}, solver=wrong_schedule).run(progress=False)


@pytest.mark.parametrize("overrides, match", [
    ({"reward": object()}, r"reward: recipe 'rg-lcd' takes a registered reward name .* got a object"),
    ({"reward": MyOwnRM}, "got the class MyOwnRM"),
    ({"reward": MyOwnRM(), "reward_params": {"scale": 2}}, "reward_params: the reward was passed built"),
    ({"reward": MyOwnRM(), "pretrained_proxy": "somewhere",
      "proxy": LatentRewardModel(latent_channels=4, text_dim=32, **SMALL_LRM)},
     "pretrained_proxy: the proxy was passed built"),
    ({"reward": MyOwnRM(), "solver": MyOwnRM()}, "solver: recipe 'rg-lcd' takes a registered solver name"),
])
def test_wrong_built_components_are_refused_in_one_sentence(values, tmp_path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        rk.recipe("rg-lcd", {**values, "output_dir": str(tmp_path)}, **overrides)
    assert not list(tmp_path.iterdir())


def test_a_recipe_without_component_keys_refuses_built_objects():
    from rewardkit.recipes.lcd import LCDRecipe

    with pytest.raises(ConfigError, match="takes no built component for reward"):
        LCDRecipe.__init__(object.__new__(LCDRecipe), None, components={"reward": MyOwnRM()})


def _teacher_alphas(values) -> torch.Tensor:
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_pretrained(values["pretrained_teacher_model"],
                                         subfolder="scheduler").alphas_cumprod


def test_params_from_a_config_file_beside_a_built_component_are_refused(values, tmp_path):
    path = tmp_path / "rg.toml"
    path.write_text('reward_params = { scale = 2.0 }\n')
    with pytest.raises(ConfigError, match="reward_params: the reward was passed built"):
        rk.recipe("rg-lcd", path, **{**values, "output_dir": str(tmp_path / "out")},
                  reward=MyOwnRM(), proxy="none")
