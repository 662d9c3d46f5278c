"""The stable-diffusion-xl backbone on a tiny SDXL-architecture pipeline built offline: its
conditioning equals diffusers' own, it meets the backbone contract, and lcd and rg-lcd (direct
and LRM, full and LoRA) train on it into folders plain diffusers samples."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pytest
import torch
from safetensors.torch import load_file

import rewardkit as rk
from rewardkit.backbones import Conditioning
from rewardkit.backbones.stable_diffusion_xl import StableDiffusionXLBackbone
from rewardkit.errors import ConfigError
from rewardkit.rewards.base import RewardModel
from rewardkit.testing import check_backbone
from rewardkit.testing.tiny_sdxl import build_tiny_sdxl_pipeline
from rewardkit.training.metrics import read_metrics
from rewardkit.testing.tiny_training import write_tiny_image_folder

SMALL_LRM = dict(embed_dim=16, image_widths=[8, 16], text_width=16, text_heads=2)
PROMPTS = ["a photo of a red circle", "a blue square"]


class Redness(RewardModel):
    name = "sdxl-test-redness"
    differentiable = True

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        channels = images.mean((2, 3))
        return channels[:, 0] - 0.5 * (channels[:, 1] + channels[:, 2])


@pytest.fixture(scope="module", params=["epsilon", "v_prediction"])
def teacher(request, tmp_path_factory) -> Path:
    return build_tiny_sdxl_pipeline(tmp_path_factory.mktemp(request.param) / "sdxl",
                                    prediction_type=request.param)


@pytest.fixture(scope="module")
def backbone(teacher) -> StableDiffusionXLBackbone:
    return rk.backbone("stable-diffusion-xl", pretrained_model_name_or_path=str(teacher))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_tiny_image_folder(tmp_path_factory.mktemp("data"), count=8, size=16)


def test_conditioning_is_diffusers_sdxl_conditioning(backbone, teacher):
    from diffusers import StableDiffusionXLPipeline

    cond = backbone.encode_prompts(PROMPTS)
    assert isinstance(cond, Conditioning) and backbone.text_embed_dim == 16 + 32
    assert cond.prompt_embeds.shape == (2, 77, 48) and cond.added["text_embeds"].shape == (2, 32)
    assert cond.added["time_ids"].tolist() == [[16, 16, 0, 0, 16, 16]] * 2
    pipe = StableDiffusionXLPipeline.from_pretrained(teacher)
    embeds, _, pooled, _ = pipe.encode_prompt(PROMPTS, device="cpu", num_images_per_prompt=1,
                                              do_classifier_free_guidance=False)
    torch.testing.assert_close(cond.prompt_embeds, embeds)
    torch.testing.assert_close(cond.added["text_embeds"], pooled)
    # the LRM reads the prompt embeddings plus the pooled embedding as a 78th token
    text = backbone.proxy_text(cond)
    assert text.shape == (2, 78, 48)
    assert torch.equal(text[:, :77], cond.prompt_embeds)
    assert torch.equal(text[:, 77, :32], cond.added["text_embeds"]) and not text[:, 77, 32:].any()
    empty = backbone.empty_conditioning(3)
    assert not empty.prompt_embeds.any() and not empty.added["text_embeds"].any()
    assert torch.equal(empty.added["time_ids"], cond.added["time_ids"][:1].expand(3, -1))
    # predict is the pipeline's UNet call with added_cond_kwargs
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([999, 250])
    with torch.no_grad():
        ours = backbone.predict(backbone.unet, z, t, cond)
        theirs = pipe.unet(z, t, encoder_hidden_states=embeds,
                           added_cond_kwargs={"text_embeds": pooled,
                                              "time_ids": cond.added["time_ids"]}).sample
    torch.testing.assert_close(ours, theirs)


def test_sdxl_meets_the_backbone_contract(backbone, tmp_path):
    check_backbone(backbone, tmp_path)


def test_a_folder_without_the_second_text_encoder_is_refused(teacher, tmp_path):
    import shutil

    broken = tmp_path / "no-te2"
    shutil.copytree(teacher, broken)
    shutil.rmtree(broken / "text_encoder_2")
    with pytest.raises(ConfigError, match="missing text_encoder_2"):
        StableDiffusionXLBackbone(str(broken))


def test_the_vae_can_come_from_elsewhere(teacher, tmp_path):
    from diffusers import AutoencoderKL

    other = AutoencoderKL.from_pretrained(teacher, subfolder="vae")
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(0.5)
    other.save_pretrained(tmp_path / "vae-fix")
    backbone = StableDiffusionXLBackbone(str(teacher),
                                         pretrained_vae_model_name_or_path=str(tmp_path / "vae-fix"))
    loaded = dict(backbone.vae.named_parameters())
    for name, p in other.named_parameters():
        assert torch.equal(loaded[name], p), name
    with pytest.raises(ConfigError, match="pretrained_vae_model_name_or_path"):
        StableDiffusionXLBackbone(str(teacher), pretrained_vae_model_name_or_path=str(tmp_path / "none"))


def test_the_recipe_flag_swaps_the_vae(teacher, data, tmp_path):
    from diffusers import AutoencoderKL

    other = AutoencoderKL.from_pretrained(teacher, subfolder="vae")
    with torch.no_grad():
        other.decoder.conv_out.bias.add_(1.0)
    other.save_pretrained(tmp_path / "vae-fix")
    recipe = rk.recipe("lcd", _base(teacher, data, tmp_path / "out",
                                    pretrained_vae_model_name_or_path=str(tmp_path / "vae-fix")))
    recipe.setup()
    assert torch.equal(recipe.backbone.vae.decoder.conv_out.bias, other.decoder.conv_out.bias)


def _base(teacher, data, out, **extra):
    return {**dict(pretrained_teacher_model=str(teacher), train_shards_path_or_url=str(data),
                   backbone="stable-diffusion-xl", resolution=16, train_batch_size=2,
                   max_train_steps=2, unet_time_cond_proj_dim=32, validation_steps=0,
                   checkpointing_steps=0, report_to="none", seed=0, output_dir=str(out)), **extra}


@pytest.mark.parametrize("mode", ["lcd", "direct", "lrm"])
def test_lcd_and_rg_lcd_train_into_a_pipeline_plain_diffusers_samples(mode, teacher, data, tmp_path):
    from diffusers import LCMScheduler, StableDiffusionXLPipeline

    values = _base(teacher, data, tmp_path / mode)
    if mode == "lcd":
        recipe = rk.recipe("lcd", values)
    else:
        values.update(proxy_batch_size=2, vae_decode_batch_size=4)
        if mode == "lrm":
            values.update(proxy="lrm", proxy_params=SMALL_LRM, proxy_eval_num_prompts=2)
        else:
            values.update(proxy="none")
        recipe = rk.recipe("rg-lcd", values, reward=Redness())
    out = recipe.run(progress=False)
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "lcd_loss" in r]
    assert [r["step"] for r in rows] == [1, 2] and all(r["lcd_loss"] > 0 for r in rows)
    if mode == "lrm":  # the LRM trained online on SDXL latents, prompt and pooled embeddings
        assert all("proxy_loss" in r for r in rows)
        from rewardkit.proxies.preference_set import PreferenceSet
        from rewardkit.recipes.rg_lcd import HELDOUT_DIR

        assert PreferenceSet.load(out / HELDOUT_DIR).prompt_embeds.shape[1:] == (78, 48)
    pipe = StableDiffusionXLPipeline.from_pretrained(out / "pipeline")
    assert isinstance(pipe.scheduler, LCMScheduler) and pipe.unet.config.time_cond_proj_dim == 32
    images = pipe("a red circle", num_inference_steps=2, height=16, width=16,
                  guidance_scale=7.5, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 16, 16, 3) and 0 <= images.min() and images.max() <= 1


def test_lcm_lora_on_sdxl_loads_with_plain_load_lora_weights(teacher, data, tmp_path):
    from diffusers import LCMScheduler, StableDiffusionXLPipeline

    out = rk.recipe("lcd", _base(teacher, data, tmp_path / "lora", use_lora=True, lora_rank=4,
                                 unet_time_cond_proj_dim=None, learning_rate=1e-2)).run(progress=False)
    folder = out / "pipeline"
    assert (folder / "pytorch_lora_weights.safetensors").is_file()
    merged = StableDiffusionXLPipeline.from_pretrained(folder)
    applied = StableDiffusionXLPipeline.from_pretrained(teacher)
    applied.load_lora_weights(str(folder))
    applied.scheduler = LCMScheduler.from_config(merged.scheduler.config)

    def sample(pipe):
        return pipe("a red circle", num_inference_steps=2, height=16, width=16, guidance_scale=1.0,
                    output_type="np", generator=torch.Generator().manual_seed(0)).images

    assert abs(sample(applied) - sample(merged)).max() < 1e-4


def test_sdxl_training_resumes_bit_exactly(teacher, data, tmp_path):
    from rewardkit.recipes.lcd import LCDRecipe

    class CrashAfterStep3(LCDRecipe):
        def after_step(self):
            if self.global_step + 1 == 3:
                raise KeyboardInterrupt("simulated interruption")
            return super().after_step()

    common = dict(max_train_steps=4, checkpointing_steps=2)
    straight = rk.recipe("lcd", _base(teacher, data, tmp_path / "a", **common)).run(progress=False)
    with pytest.raises(KeyboardInterrupt):
        CrashAfterStep3(rk.recipe("lcd", _base(teacher, data, tmp_path / "b", **common)).config
                        ).run(progress=False)
    resumed = rk.recipe("lcd", _base(teacher, data, tmp_path / "b", resume_from_checkpoint="latest",
                                     **common)).run(progress=False)
    for name in ("model.safetensors", "target.safetensors"):
        a = load_file(str(straight / "checkpoint-4" / name))
        b = load_file(str(resumed / "checkpoint-4" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_fp16_keeps_the_stock_vae_in_fp32_and_conditions_on_the_training_resolution(teacher, tmp_path):
    half = StableDiffusionXLBackbone(str(teacher), dtype="float16")
    assert half.unet.dtype == torch.float16 and half.vae.dtype == torch.float32
    half.configure(resolution=32)
    assert half.encode_prompts(["a cat"]).added["time_ids"].tolist() == [[32, 32, 0, 0, 32, 32]]
    assert half.empty_conditioning(1).added["time_ids"].tolist() == [[32, 32, 0, 0, 32, 32]]


def test_a_built_proxy_with_the_embedded_world_defaults_drops_the_pretrained_one():
    from rewardkit.proxies import LatentRewardModel

    proxy = LatentRewardModel(latent_channels=4, text_dim=32, **SMALL_LRM)
    recipe = rk.recipe("rg-lcd", proxy=proxy)  # the world preset would load its shipped LRM
    assert recipe.config.pretrained_proxy is None and recipe.components["proxy"] is proxy


def test_the_vae_flag_is_refused_for_a_backbone_without_one(teacher, data, tmp_path):
    from rewardkit.hookspecs import hookimpl
    from rewardkit.plugins import load_host, reset_host

    class NoVae(StableDiffusionXLBackbone):
        name = "sdxl-without-vae-option"

        def __init__(self, pretrained_model_name_or_path: str, dtype: str = "float32",
                     device: str = "cpu", revision=None, variant=None):
            super().__init__(pretrained_model_name_or_path, dtype=dtype, device=device)

    class Plugin:
        @hookimpl
        def register_backbones(self, register):
            register(NoVae)

    reset_host(load_host(extra_plugins=[("no-vae", Plugin())]))
    try:
        with pytest.raises(ConfigError, match="takes no separate VAE"):
            rk.recipe("lcd", _base(teacher, data, tmp_path, backbone="sdxl-without-vae-option",
                                   pretrained_vae_model_name_or_path=str(teacher / "vae")))
    finally:
        reset_host()
