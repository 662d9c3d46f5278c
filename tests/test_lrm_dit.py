"""The latent proxy RMs on SD3's 16-channel flow latents: ``lrm-dit`` (the teacher's first MMDiT
blocks as the image side) built from the tiny SD3 teacher, saved and loaded without it, trained
by rg-lcd and lrm-pretrain; and lrm-pretrain's two stages with ``lrm`` on SD3 latents."""

from __future__ import annotations

import pytest
import torch

import rewardkit as rk
from rewardkit.errors import ConfigError
from rewardkit.plugins import get_host
from rewardkit.proxies.dit_lrm import DiTLatentRewardModel
from rewardkit.proxies.factory import build_proxy
from rewardkit.testing.tiny_sd3 import build_tiny_sd3_pipeline
from rewardkit.testing.tiny_training import write_tiny_image_folder
from rewardkit.training.metrics import read_metrics

TOKENS = 16
SMALL = dict(num_blocks=1, embed_dim=16, text_width=16, text_heads=2)
SMALL_LRM = dict(embed_dim=16, image_widths=[8, 16], text_width=16, text_heads=2)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("lrm-dit")
    teacher = build_tiny_sd3_pipeline(root / "sd3")
    backbone = rk.backbone("stable-diffusion-3", pretrained_model_name_or_path=str(teacher),
                           max_sequence_length=TOKENS)
    return {"teacher": teacher, "backbone": backbone,
            "data": write_tiny_image_folder(root / "data", count=8, size=16)}


def text(backbone, *prompts):
    return backbone.proxy_text(backbone.encode_prompts(list(prompts)))


def test_registered_through_the_proxy_hook():
    spec = get_host().get("proxy", "lrm-dit")
    assert spec.factory is DiTLatentRewardModel
    assert {"transformer_config", "num_blocks", "dit_timestep", "trainable"} <= {
        p.name for p in spec.params}


def test_built_from_the_teacher_runs_its_first_blocks(assets):
    backbone = assets["backbone"]
    proxy = build_proxy("lrm-dit", dict(SMALL), backbone)
    teacher = backbone.transformer
    copied = proxy.image_tower.state_dict()
    own = teacher.state_dict()
    encoder = [k for k in copied if not k.startswith("head.")]
    assert all(torch.equal(copied[k], own[k]) for k in encoder)
    assert not any(k.startswith(("transformer_blocks.1.", "norm_out", "proj_out")) for k in copied)
    # the image tokens after one block are the teacher's own, at model time 0
    cond = backbone.encode_prompts(["a red circle", "a blue square"])
    latents = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hidden = teacher.pos_embed(latents)
        temb = teacher.time_text_embed(torch.zeros(2), cond.added["pooled_projections"])
        context = teacher.context_embedder(cond.prompt_embeds)
        _, expected = teacher.transformer_blocks[0](hidden_states=hidden,
                                                    encoder_hidden_states=context, temb=temb)
        tower = proxy.image_tower
        tokens, pooled = proxy.split_text(backbone.proxy_text(cond))
        assert torch.equal(tokens, cond.prompt_embeds)
        assert torch.equal(pooled, cond.added["pooled_projections"])
        got = tower.transformer_blocks[0](hidden_states=tower.pos_embed(latents),
                                          encoder_hidden_states=tower.context_embedder(tokens),
                                          temb=tower.time_text_embed(torch.zeros(2), pooled))[1]
    torch.testing.assert_close(got, expected)
    scores = proxy(latents, backbone.proxy_text(cond))
    assert scores.shape == (2,) and bool((scores.abs() <= 1 + 1e-6).all())
    other = proxy(latents, text(backbone, "a cat", "a dog"))
    assert not torch.allclose(scores, other)  # the image side reads the prompt


def test_save_and_load_without_the_teacher(assets, tmp_path):
    backbone = assets["backbone"]
    proxy = build_proxy("lrm-dit", dict(SMALL), backbone)
    proxy.save_pretrained(tmp_path / "proxy")
    loaded = DiTLatentRewardModel.from_pretrained(tmp_path / "proxy")
    latents = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(1))
    embeds = text(backbone, "a red circle", "a blue square")
    torch.testing.assert_close(loaded(latents, embeds), proxy(latents, embeds))
    assert {n.split(".")[0] for n in proxy.trainable_parameter_names()} >= {"image_tower",
                                                                             "logit_scale"}


def test_bad_settings_and_a_unet_teacher_are_refused(assets, tmp_path):
    from rewardkit.backbones.stable_diffusion import StableDiffusionBackbone
    from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline

    with pytest.raises(ConfigError, match="num_blocks must be between 1 and 1"):
        build_proxy("lrm-dit", {**SMALL, "num_blocks": 2}, assets["backbone"])
    with pytest.raises(ConfigError, match="transformer_config"):
        DiTLatentRewardModel()
    sd = StableDiffusionBackbone(str(build_tiny_sd_pipeline(tmp_path / "sd")))
    with pytest.raises(ConfigError, match="lrm-dit reads an MMDiT teacher"):
        build_proxy("lrm-dit", dict(SMALL), sd)


def _rg_values(assets, out, **extra):
    return dict(pretrained_teacher_model=str(assets["teacher"]),
                train_shards_path_or_url=str(assets["data"]), backbone="stable-diffusion-3",
                backbone_params={"max_sequence_length": TOKENS}, resolution=16,
                train_batch_size=2, max_train_steps=2, unet_time_cond_proj_dim=None, w_min=3.0,
                w_max=3.0, validation_steps=0, checkpointing_steps=0, report_to="none", seed=0,
                output_dir=str(out), reward="rule-judge", proxy_batch_size=2,
                vae_decode_batch_size=4, **extra)


def test_rg_lcd_trains_with_it_on_sd3(assets, tmp_path):
    recipe = rk.recipe("rg-lcd", _rg_values(assets, tmp_path / "rg", proxy="lrm-dit",
                                            proxy_params={**SMALL, "trainable": "last"},
                                            proxy_eval_num_prompts=2))
    recipe.run(progress=False)
    rows = read_metrics(tmp_path / "rg" / "metrics.jsonl")
    assert [r["step"] for r in rows if "proxy_loss" in r] == [1, 2]
    assert "proxy_heldout_accuracy" in rows[0]
    teacher = assets["backbone"].transformer.state_dict()
    tower = recipe.proxy_model.image_tower.state_dict()
    assert any(not torch.equal(tower[k], teacher[k]) for k in tower
               if k.startswith("transformer_blocks.0."))  # "last": the one block trains
    assert all(torch.equal(tower[k], teacher[k]) for k in tower if k.startswith("pos_embed"))


@pytest.mark.parametrize("proxy", ["lrm", "lrm-dit"])
def test_lrm_pretrain_works_on_sd3_latents(assets, tmp_path, proxy):
    params = dict(SMALL_LRM) if proxy == "lrm" else dict(SMALL)
    values = dict(pretrained_teacher_model=str(assets["teacher"]), backbone="stable-diffusion-3",
                  backbone_params={"max_sequence_length": TOKENS},
                  train_shards_path_or_url=str(assets["data"]), output_dir=str(tmp_path / "pre"),
                  resolution=16, train_batch_size=4, learning_rate=3e-3, proxy=proxy,
                  proxy_params=params, checkpointing_steps=0, validation_steps=0,
                  report_to="none", seed=0, reward="rule-judge", preference_num_prompts=3,
                  preference_steps=2, preference_batch_size=4,
                  preference_teacher_settings=[[2, 1.0]], preference_noise_levels=[0.5],
                  contrastive_steps=2 if proxy == "lrm" else 0)
    out = rk.recipe("lrm-pretrain", values).run(progress=False)
    rows = read_metrics(out / "metrics.jsonl")
    stages = [r.get("stage") for r in rows if "stage" in r]
    assert stages.count("preference") == 2
    assert stages.count("contrastive") == (2 if proxy == "lrm" else 0)
    from rewardkit.proxies.preference_set import PreferenceSet
    from rewardkit.recipes.lrm_pretrain import PREFERENCE_SET_DIR

    pset = PreferenceSet.load(out / PREFERENCE_SET_DIR)  # teacher samples: flow Euler with CFG
    assert pset.latents.shape[1:] == (16, 8, 8)
    assert pset.prompt_embeds.shape[1:] == (78 + TOKENS, 32)
    base = _rg_values(assets, tmp_path / "rg", proxy=proxy, pretrained_proxy=str(out / "proxy"),
                      proxy_eval_num_prompts=0)
    recipe = rk.recipe("rg-lcd", base)
    recipe.setup()
    saved = type(recipe.proxy_model).from_pretrained(out / "proxy").state_dict()
    assert all(torch.equal(v.cpu(), saved[k]) for k, v in recipe.proxy_model.state_dict().items())

