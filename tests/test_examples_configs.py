"""The shipped example configs parse into the rg-lcd config with the values they document."""

from __future__ import annotations

from pathlib import Path

import pytest

from rewardkit.config import load_config
from rewardkit.recipes.rg_lcd import RGLCDConfig

CONFIGS = sorted((Path(__file__).parent.parent / "examples" / "configs").glob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_config_loads(path):
    # validate=False: the hpsv2 plugin (and hub access) are not part of the core test environment
    config = load_config(RGLCDConfig, path, validate=False)
    assert config.reward in ("hpsv2", "pickscore")
    if config.reward == "hpsv2":
        assert config.reward_params == {"version": "v2.1"}
    assert config.pretrained_teacher_model.startswith("stabilityai/stable-diffusion-")
    assert config.w_min <= config.w_max


def test_sd21_config_is_the_papers_setting():
    config = load_config(RGLCDConfig, Path(CONFIGS[0]).parent / "sd21-hpsv21.toml", validate=False)
    assert (config.resolution, config.proxy, config.mixed_precision) == (768, "none", "bf16")
    assert (config.learning_rate, config.ema_decay, config.num_ddim_timesteps) == (1e-6, 0.95, 50)


def test_sdxl_config_uses_the_sdxl_backbone_and_the_fp16_fix_vae():
    config = load_config(RGLCDConfig, Path(CONFIGS[0]).parent / "sdxl-hpsv21-lrm.toml",
                         validate=False)
    assert config.backbone == "stable-diffusion-xl" and config.resolution == 1024
    assert config.pretrained_teacher_model == "stabilityai/stable-diffusion-xl-base-1.0"
    assert config.pretrained_vae_model_name_or_path == "madebyollin/sdxl-vae-fp16-fix"
    assert config.proxy == "lrm" and (config.w_min, config.w_max) == (3.0, 15.0)


@pytest.mark.parametrize("name", ["sd35m-hpsv21-lrm.toml", "sd35m-pickscore-lrm-lora.toml"])
def test_sd35m_configs_distil_the_flow_teacher_with_guidance_baked_in(name):
    from rewardkit.recipes.lcd_config import check_guidance_input

    config = load_config(RGLCDConfig, Path(CONFIGS[0]).parent / name, validate=False)
    assert config.backbone == "stable-diffusion-3" and config.resolution == 1024
    assert config.pretrained_teacher_model == "stabilityai/stable-diffusion-3.5-medium"
    assert config.unet_time_cond_proj_dim is None and config.w_min == config.w_max == 3.5
    assert config.validation_guidance_scale == 1.0 and config.proxy == "lrm"
    check_guidance_input(config.backbone, config.unet_time_cond_proj_dim)  # what validate checks


TUNING = sorted((CONFIGS[0].parent).glob("*/*.toml"))


@pytest.mark.parametrize("path", TUNING, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_draft_and_grpo_configs_load_into_their_recipes_config(path):
    """``examples/configs/draft`` and ``grpo``: every key is one of the recipe's (a typo would
    be refused), and the values a GPU user relies on are there."""
    import rewardkit as rk

    config_class = rk.describe("recipe", path.parent.name).factory.Config
    config = load_config(config_class, path, validate=False)
    assert config.pretrained_student and config.reward
    assert config.pretrained_teacher_model.startswith("stabilityai/stable-diffusion-")
    assert config.mixed_precision == "bf16" and config.train_shards_path_or_url.endswith(".txt")
    assert {p.parent.name for p in TUNING} == {"draft", "grpo"}
