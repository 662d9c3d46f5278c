"""The built-in recipes keep the recipe contract (rewardkit.testing.recipe_contract): exact
resume, no pickles in checkpoints, a NaN loss stops the run with the checkpoints intact, two
CPU processes end identical."""

from __future__ import annotations

import pytest

from rewardkit.recipes.lcd import LCDRecipe
from rewardkit.recipes.lrm_pretrain import LRMPretrainRecipe
from rewardkit.recipes.rg_lcd import RGLCDRecipe
from rewardkit.testing.recipe_contract import check_recipe
from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline
from rewardkit.testing.tiny_training import write_tiny_image_folder

SMALL_LRM = dict(embed_dim=16, image_widths=[8, 16], text_width=16, text_heads=2)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract")
    return {"teacher": str(build_tiny_sd_pipeline(root / "teacher")),
            "data": str(write_tiny_image_folder(root / "data", count=8, size=16))}


def base(assets) -> dict:
    return dict(pretrained_teacher_model=assets["teacher"], train_shards_path_or_url=assets["data"],
                resolution=16, train_batch_size=2, learning_rate=1e-3, seed=0, report_to="none",
                validation_steps=0)


RECIPES = {
    "lcd": (LCDRecipe, dict(unet_time_cond_proj_dim=32)),
    "rg-lcd": (RGLCDRecipe, dict(unet_time_cond_proj_dim=32, reward="jpeg-compressibility",
                                 proxy_params=SMALL_LRM, proxy_batch_size=2,
                                 proxy_eval_num_prompts=0)),
    "lrm-pretrain": (LRMPretrainRecipe, dict(train_batch_size=4, contrastive_steps=4,
                                             proxy_params=SMALL_LRM)),
}


@pytest.mark.parametrize("name", list(RECIPES))
def test_builtin_recipe_keeps_the_contract(name, assets, tmp_path):
    recipe_class, extra = RECIPES[name]
    passed = check_recipe(recipe_class, {**base(assets), **extra}, tmp_path)
    assert passed == ["resume", "no_pickles", "non_finite", "two_processes"]
