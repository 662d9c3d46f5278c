"""The world teacher's training pieces: vocabulary, skeleton, VAE, latent scale, UNet, budgets."""

from __future__ import annotations

import time

import pytest
import torch

from rewardkit.world.grammar import all_scenes
from rewardkit.world.teacher import (TeacherSize, _Schedule, build_teacher_skeleton, encode_captions,
                                     encode_pool, latent_scaling_factor, render_pool, train_unet,
                                     train_vae, world_words)

TINY = TeacherSize(vae_block_out_channels=(8, 8, 16), unet_block_out_channels=(16, 32),
                   cross_attention_dim=32, text_layers=1, text_heads=2, text_intermediate_size=32,
                   norm_num_groups=8)


@pytest.fixture(scope="module")
def skeleton(tmp_path_factory):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    path = build_teacher_skeleton(tmp_path_factory.mktemp("teacher"), TINY, seed=0)
    return {"path": path,
            "tokenizer": CLIPTokenizer.from_pretrained(path / "tokenizer"),
            "text_encoder": CLIPTextModel.from_pretrained(path / "text_encoder").eval(),
            "vae": AutoencoderKL.from_pretrained(path / "vae"),
            "unet": UNet2DConditionModel.from_pretrained(path / "unet"),
            "scheduler": DDPMScheduler.from_pretrained(path / "scheduler")}


@pytest.fixture(scope="module")
def pool():
    return render_pool(48)


def test_every_caption_word_is_one_token_and_no_caption_is_truncated(skeleton):
    tokenizer = skeleton["tokenizer"]
    for word in world_words():
        assert tokenizer.tokenize(word) == [word + "</w>"]
    longest = max(len(tokenizer(s.caption()).input_ids) for s in all_scenes())
    assert longest <= tokenizer.model_max_length == TINY.model_max_length


def test_skeleton_maps_32_pixel_images_to_8x8x4_latents(skeleton):
    assert skeleton["vae"].config.sample_size == 32
    assert skeleton["unet"].config.sample_size == TINY.latent_side == 8
    assert skeleton["scheduler"].config.beta_schedule == "scaled_linear"
    assert skeleton["scheduler"].config.prediction_type == "epsilon"
    latents = skeleton["vae"].encode(torch.zeros(1, 3, 32, 32)).latent_dist.mean
    assert latents.shape == (1, 4, 8, 8)


def test_render_pool_is_training_split_pixels_in_range(pool):
    pixels, captions = pool
    assert pixels.shape == (48, 3, 32, 32) and len(captions) == 48
    assert pixels.min() >= -1 and pixels.max() <= 1
    assert len(set(captions)) > 10


def _reconstruction_error(vae, pixels):
    with torch.no_grad():
        return float((vae.decode(vae.encode(pixels).latent_dist.mean).sample - pixels).abs().mean())


def test_vae_training_lowers_reconstruction_error(skeleton, pool):
    import copy

    vae = copy.deepcopy(skeleton["vae"])
    pixels = pool[0]
    before = _reconstruction_error(vae, pixels)
    stats = train_vae(vae, pixels, steps=40, batch_size=16, lr=1e-2, kl_weight=1e-3, seconds=60,
                      warmup=5)
    assert stats.steps == 40 and len(stats.losses) > 5
    assert stats.losses[-1] < stats.losses[0]
    assert _reconstruction_error(vae, pixels) < 0.92 * before  # a start: full builds train ~1000 steps
    assert not any(p.requires_grad for p in vae.parameters())


def test_time_budget_stops_a_stage_early(skeleton, pool):
    import copy

    vae = copy.deepcopy(skeleton["vae"])
    began = time.perf_counter()
    stats = train_vae(vae, pool[0], steps=10**6, batch_size=4, lr=1e-3, kl_weight=1e-3, seconds=0.5)
    assert 0 < stats.steps < 10**6
    assert 0.5 <= stats.seconds < 0.5 + 5 and time.perf_counter() - began < 10


def test_schedule_warms_up_then_decays_to_zero():
    schedule = _Schedule(steps=100, seconds=3600, warmup=10)
    assert schedule.factor(0) == pytest.approx(0.1, abs=1e-3)
    assert schedule.factor(9) == pytest.approx(1.0, abs=0.03)  # cosine has begun
    assert schedule.factor(50) == pytest.approx(0.5, abs=0.01)
    assert schedule.factor(100) == pytest.approx(0.0, abs=1e-6)
    assert _Schedule(steps=100, seconds=0.0, warmup=1).progress(0) == 1.0


def test_latent_scaling_gives_unit_variance(skeleton, pool):
    means, stds = encode_pool(skeleton["vae"], pool[0], batch_size=16)
    assert means.shape == stds.shape == (48, 4, 8, 8)
    scale = latent_scaling_factor(means, stds)
    noise = torch.randn(means.shape, generator=torch.Generator().manual_seed(0))
    assert float(((means + stds * noise) * scale).std()) == pytest.approx(1.0, abs=0.05)


def test_unet_training_lowers_the_loss_and_returns_a_frozen_ema(skeleton, pool):
    import copy

    pixels, captions = pool
    means, stds = encode_pool(skeleton["vae"], pixels, batch_size=16)
    scale = latent_scaling_factor(means, stds)
    distinct = sorted(set(captions))
    embeds = encode_captions(skeleton["tokenizer"], skeleton["text_encoder"], distinct)
    empty = encode_captions(skeleton["tokenizer"], skeleton["text_encoder"], [""])
    assert embeds.shape == (len(distinct), TINY.model_max_length, TINY.cross_attention_dim)
    unet = copy.deepcopy(skeleton["unet"])
    start = {k: v.clone() for k, v in unet.state_dict().items()}
    losses: list[float] = []
    ema, stats = train_unet(
        unet, (means * scale, stds * scale), torch.tensor([distinct.index(c) for c in captions]),
        embeds, empty, skeleton["scheduler"], steps=60, batch_size=16, lr=2e-3, seconds=120,
        warmup=5, progress=lambda done, total, loss: losses.append(loss))
    assert stats.steps == 60 == len(losses)
    assert sum(losses[-15:]) / 15 < 0.8 * sum(losses[:15]) / 15
    assert ema is not unet and not any(p.requires_grad for p in ema.parameters())
    ema_state, trained = ema.state_dict(), unet.state_dict()
    key = "conv_in.weight"
    assert not torch.equal(ema_state[key], trained[key])  # an average, not a copy
    assert not torch.equal(ema_state[key], start[key])
