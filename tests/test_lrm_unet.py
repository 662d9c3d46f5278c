"""The diffusion-native LRM (proxy ``lrm-unet``): built from the tiny teacher's UNet encoder,
saved and loaded without it, trained by the online update, used by rg-lcd and lrm-pretrain."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from rewardkit.backbones.stable_diffusion import StableDiffusionBackbone
from rewardkit.errors import ConfigError
from rewardkit.plugins import get_host
from rewardkit.proxies import ProxyUpdater
from rewardkit.proxies.base import CONFIG_NAME
from rewardkit.proxies.factory import build_proxy
from rewardkit.proxies.losses import pairwise_accuracy
from rewardkit.proxies.unet_lrm import UNetLatentRewardModel
from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline
from rewardkit.testing.tiny_training import tiny_lcd_config, write_tiny_image_folder

SMALL = dict(embed_dim=16, text_width=16, text_heads=2)
TEXT_DIM = 32  # the tiny teacher's cross_attention_dim


def pretrain_lrm(values) -> Path:
    """Run lrm-pretrain from a mapping of config values; the saved proxy folder."""
    import rewardkit as rk

    return rk.recipe("lrm-pretrain", dict(values)).run(progress=False) / "proxy"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("lrm-unet")
    teacher = build_tiny_sd_pipeline(root / "teacher")
    return {"teacher": teacher, "backbone": StableDiffusionBackbone(str(teacher)),
            "data": write_tiny_image_folder(root / "data", count=8, size=16)}


def prompts(backbone, *texts):
    return backbone.encode_prompts(list(texts)).prompt_embeds


def test_registered_through_the_proxy_hook():
    spec = get_host().get("proxy", "lrm-unet")
    assert spec.factory is UNetLatentRewardModel
    assert {"unet_config", "unet_timestep", "init_from_teacher", "trainable"} <= {
        p.name for p in spec.params}


def test_built_from_the_teacher_copies_its_encoder(assets):
    backbone = assets["backbone"]
    proxy = build_proxy("lrm-unet", dict(SMALL), backbone)
    teacher = backbone.unet.state_dict()
    copied = proxy.image_tower.state_dict()
    encoder = [k for k in copied if not k.startswith("head.")]
    assert encoder and all(k.startswith(("conv_in", "time_", "down_blocks", "mid_block"))
                           for k in encoder)
    for key in encoder:
        assert torch.equal(copied[key], teacher[key]), key
    assert not any(k.startswith(("up_blocks", "conv_out")) for k in copied)  # no decoder half
    embeds = prompts(backbone, "a red circle", "a blue square", "a red circle")
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    scores = proxy(latents, embeds)
    assert scores.shape == (3,) and bool((scores.abs() <= 1 + 1e-6).all())
    assert math.isclose(float(proxy.logit_scale_value()), 1 / 0.07, rel_tol=1e-5)
    torch.testing.assert_close(proxy.logits(latents, embeds), scores / 0.07)


def test_the_image_side_reads_the_prompt(assets):
    backbone = assets["backbone"]
    proxy = build_proxy("lrm-unet", dict(SMALL), backbone)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    a = proxy.encode_latents_for(latents, prompts(backbone, "a red circle", "a red circle"))
    b = proxy.encode_latents_for(latents, prompts(backbone, "a blue square", "a blue square"))
    assert not torch.allclose(a, b)  # cross-attention on the prompt
    assert not hasattr(proxy, "encode_latents")  # so lrm-pretrain refuses its contrastive stage


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (3, 5), (16, 16)])
def test_it_scores_latents_of_any_size(assets, size):
    # the tiny teacher's latents are 8x8; a run at another resolution hands it other sizes
    backbone = assets["backbone"]
    proxy = build_proxy("lrm-unet", dict(SMALL), backbone)
    latents = torch.randn(2, 4, *size, generator=torch.Generator().manual_seed(2))
    scores = proxy(latents, prompts(backbone, "a red circle", "a blue square"))
    assert scores.shape == (2,) and bool(torch.isfinite(scores).all())
    assert bool((scores.abs() <= 1 + 1e-6).all())


def test_random_init_is_an_option(assets):
    backbone = assets["backbone"]
    proxy = build_proxy("lrm-unet", {**SMALL, "init_from_teacher": False}, backbone)
    assert not torch.equal(proxy.image_tower.conv_in.weight, backbone.unet.conv_in.weight)


def test_save_and_load_without_the_teacher(assets, tmp_path):
    backbone = assets["backbone"]
    proxy = build_proxy("lrm-unet", {**SMALL, "unet_timestep": 5}, backbone)
    with torch.no_grad():
        proxy.logit_scale.fill_(1.25)
    proxy.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / CONFIG_NAME).read_text())
    assert saved["name"] == "lrm-unet" and saved["unet_config"]["cross_attention_dim"] == TEXT_DIM
    assert not any(k.startswith("_") for k in saved["unet_config"])
    loaded = UNetLatentRewardModel.from_pretrained(tmp_path / "saved", trainable="heads")
    assert loaded.trainable == "heads" and loaded.config["unet_timestep"] == 5
    embeds = prompts(backbone, "a red circle", "a blue square")
    latents = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(loaded(latents, embeds), proxy(latents, embeds))
    # through the factory (what --pretrained_proxy does): loaded, never re-initialised
    again = build_proxy("lrm-unet", {}, backbone, pretrained=str(tmp_path / "saved"))
    assert float(again.logit_scale) == 1.25


def names(model, prefix):
    return {n for n in model.trainable_parameter_names() if n.startswith(prefix)}


def test_trainable_sets(assets):
    backbone = assets["backbone"]
    by = {t: build_proxy("lrm-unet", {**SMALL, "trainable": t}, backbone)
          for t in ("all", "heads", "last", "none")}
    everything = {n for n, _ in by["all"].named_parameters()}
    assert by["all"].trainable_parameter_names() == everything
    assert by["none"].trainable_parameter_names() == set()
    heads = by["heads"].trainable_parameter_names()
    assert heads == {n for n in everything if n.startswith(("image_tower.head", "text_tower.head"))
                     } | {"logit_scale"}
    last = by["last"].trainable_parameter_names()
    assert heads < last and names(by["last"], "image_tower.mid_block")
    assert not names(by["last"], "image_tower.down_blocks")
    assert not names(by["last"], "image_tower.conv_in")
    model = by["last"].unfreeze()
    assert {n for n, p in model.named_parameters() if p.requires_grad} == last
    assert not any(p.requires_grad for p in model.freeze().parameters())


def test_bad_configs_are_named(assets):
    config = dict(assets["backbone"].unet.config)
    with pytest.raises(ConfigError, match="unet_config"):
        UNetLatentRewardModel(**SMALL)
    with pytest.raises(ConfigError, match="addition_embed_type"):
        UNetLatentRewardModel({**config, "addition_embed_type": "text_time"}, text_dim=TEXT_DIM)
    with pytest.raises(ConfigError, match="text_dim"):
        UNetLatentRewardModel(config, text_dim=TEXT_DIM + 1)
    with pytest.raises(ConfigError, match="trainable"):
        UNetLatentRewardModel(config, text_dim=TEXT_DIM, trainable="mid")
    proxy = UNetLatentRewardModel(config, text_dim=TEXT_DIM, **SMALL)
    with pytest.raises(ConfigError, match="latents"):
        proxy(torch.randn(2, 3, 8, 8), torch.randn(2, 4, TEXT_DIM))
    with pytest.raises(ConfigError, match="prompt embeddings"):
        proxy(torch.randn(2, 4, 8, 8), torch.randn(2, 4, TEXT_DIM - 1))


def test_the_online_update_teaches_it_a_learnable_preference(assets):
    """Expert: prompt 0 prefers a high mean of latent channel 0, prompt 1 a low one; held-out
    pairwise accuracy rises from chance (and the weights the student scores with move)."""
    backbone = assets["backbone"]
    torch.manual_seed(0)
    proxy = build_proxy("lrm-unet", {**SMALL, "trainable": "all"}, backbone)
    vectors = prompts(backbone, "a red circle", "a blue square").detach()

    def batch(size, generator):
        cls = torch.randint(0, 2, (size,), generator=generator)
        sign = 1.0 - 2.0 * cls.float()
        latents = torch.randn(3, size, 4, 8, 8, generator=generator)
        latents[:, :, 0] += (torch.rand(3, size, generator=generator) * 2 - 1)[:, :, None, None]
        return latents, vectors[cls], sign[None] * latents[:, :, 0].mean((-1, -2))

    held_latents, held_embeds, held_expert = batch(96, torch.Generator().manual_seed(123))

    def accuracy():
        with torch.no_grad():
            scores = proxy(held_latents.flatten(0, 1), held_embeds.repeat(3, 1, 1)).view(3, -1)
        return float(pairwise_accuracy(scores, held_expert))

    before = {n: p.detach().clone() for n, p in proxy.named_parameters()}
    start = accuracy()
    updater = ProxyUpdater(proxy, loss_type="distillation", lr=3e-3)
    generator = torch.Generator().manual_seed(1)
    for _ in range(100):
        updater.step(*batch(16, generator), expert_logit_scale=10.0)
    end = accuracy()
    assert start < 0.7 and end > 0.85, (start, end)
    moved = [n for n, p in proxy.named_parameters() if not torch.equal(p, before[n])]
    assert any(n.startswith("image_tower.down_blocks") for n in moved)


def test_rg_lcd_trains_with_it(assets, tmp_path):
    from rewardkit.recipes.rg_lcd import RGLCDConfig, RGLCDRecipe
    from rewardkit.training.metrics import read_metrics

    base = dataclasses.asdict(tiny_lcd_config(assets["teacher"], assets["data"], tmp_path / "rg"))
    config = RGLCDConfig(**{**base, "reward": "rule-judge", "proxy": "lrm-unet",
                            "proxy_params": {**SMALL, "trainable": "last"}, "proxy_batch_size": 2,
                            "vae_decode_batch_size": 4, "proxy_eval_num_prompts": 2,
                            "max_train_steps": 2})
    config.validate()
    recipe = RGLCDRecipe(config)
    recipe.run(progress=False)
    rows = read_metrics(tmp_path / "rg" / "metrics.jsonl")
    assert [r["step"] for r in rows if "proxy_loss" in r] == [1, 2]
    assert "proxy_heldout_accuracy" in rows[0]
    # trainable "last": the proxy's copy of the mid block moved away from the teacher's, its
    # down blocks stayed the teacher's, and the teacher itself is untouched
    teacher = StableDiffusionBackbone(str(assets["teacher"])).unet.state_dict()
    tower = {k: v.cpu() for k, v in recipe.proxy_model.image_tower.state_dict().items()}
    assert any(not torch.equal(tower[k], teacher[k]) for k in tower if k.startswith("mid_block"))
    assert all(torch.equal(tower[k], teacher[k]) for k in tower if k.startswith("down_blocks"))
    for name, value in recipe.backbone.unet.state_dict().items():
        assert torch.equal(value.cpu(), teacher[name]), name
    reloaded = UNetLatentRewardModel.from_pretrained(tmp_path / "rg" / "proxy")
    for name, value in reloaded.state_dict().items():
        assert torch.equal(value, recipe.proxy_model.state_dict()[name].cpu()), name


def test_lrm_pretrain_trains_it_on_preferences_and_rg_lcd_loads_it(assets, tmp_path):
    from rewardkit.recipes.rg_lcd import RGLCDConfig, RGLCDRecipe
    from rewardkit.training.metrics import read_metrics

    values = dict(pretrained_teacher_model=str(assets["teacher"]),
                  train_shards_path_or_url=str(assets["data"]), output_dir=str(tmp_path / "pre"),
                  resolution=16, train_batch_size=4, contrastive_steps=2, learning_rate=3e-3,
                  proxy="lrm-unet", proxy_params=dict(SMALL), checkpointing_steps=0,
                  validation_steps=0, report_to="none", seed=0, reward="rule-judge",
                  preference_num_prompts=3, preference_steps=3, preference_batch_size=4,
                  preference_teacher_settings=[[2, 1.0]], preference_noise_levels=[0.5])
    with pytest.raises(ConfigError, match="contrastive_steps=0"):
        pretrain_lrm(dict(values))
    out = pretrain_lrm({**values, "contrastive_steps": 0})
    rows = read_metrics(tmp_path / "pre" / "metrics.jsonl")
    assert [r["stage"] for r in rows[1:]] == ["preference"] * 3
    base = dataclasses.asdict(tiny_lcd_config(assets["teacher"], assets["data"], tmp_path / "rg"))
    recipe = RGLCDRecipe(RGLCDConfig(**{**base, "reward": "rule-judge", "proxy": "lrm-unet",
                                        "pretrained_proxy": str(out), "proxy_batch_size": 2,
                                        "proxy_eval_num_prompts": 0}))
    recipe.setup()
    saved = UNetLatentRewardModel.from_pretrained(out).state_dict()
    for name, value in recipe.proxy_model.state_dict().items():
        assert torch.equal(value.cpu(), saved[name]), name
