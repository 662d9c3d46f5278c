"""The latent proxy RM (LRM): shapes at any latent size, persistence, the trainable set."""

from __future__ import annotations

import math

import pytest
import torch

import rewardkit as rk
from rewardkit.errors import ConfigError
from rewardkit.proxies import LatentRewardModel, ProxyRewardModel

TEXT_DIM = 24
SMALL = dict(text_dim=TEXT_DIM, embed_dim=16, image_widths=(8, 16), text_width=16, text_heads=2,
             vit_width=16, vit_depth=2, vit_heads=2, vit_grid_size=4)


def small(**overrides) -> LatentRewardModel:
    torch.manual_seed(0)
    return LatentRewardModel(**{**SMALL, **overrides})


@pytest.mark.parametrize("tower", ["conv", "vit"])
@pytest.mark.parametrize("size", [(1, 1), (2, 2), (4, 4), (8, 8), (13, 9), (32, 32), (64, 64)])
def test_forward_shapes_at_any_latent_size(tower, size):
    model = small(image_tower=tower)
    latents = torch.randn(3, 4, *size)
    embeds = torch.randn(3, 77, TEXT_DIM)
    scores = model(latents, embeds)
    assert scores.shape == (3,)
    assert torch.isfinite(scores).all()
    assert (scores.abs() <= 1 + 1e-5).all()  # cosine
    assert torch.allclose(model.score(latents, embeds), scores)


def test_text_tower_accepts_any_sequence_length():
    model = small()
    latents = torch.randn(2, 4, 8, 8)
    assert model(latents, torch.randn(2, 5, TEXT_DIM)).shape == (2,)
    assert model(latents, torch.randn(2, 77, TEXT_DIM)).shape == (2,)


def test_logits_are_cosine_times_exp_logit_scale_initialised_like_clip():
    model = small()
    assert float(model.logit_scale) == pytest.approx(math.log(1 / 0.07))
    latents, embeds = torch.randn(2, 4, 8, 8), torch.randn(2, 7, TEXT_DIM)
    assert torch.allclose(model.logits(latents, embeds), model(latents, embeds) / 0.07, atol=1e-5)


def test_vit_interpolates_position_embedding_only_when_the_grid_differs():
    model = small(image_tower="vit", vit_patch_size=2, vit_grid_size=4)
    assert model.image_tower.position_embedding(4, 4) is model.image_tower.pos_embed
    assert model.image_tower.position_embedding(6, 3).shape == (1, 18, 16)


def test_default_size_is_small_and_configurable_larger():
    default = LatentRewardModel()
    assert 1_000_000 < default.num_parameters() < 10_000_000
    larger = LatentRewardModel(image_widths=(128, 256, 512), blocks_per_stage=2, text_width=512,
                               text_depth=2, embed_dim=512)
    assert larger.num_parameters() > 3 * default.num_parameters()


def test_registered_as_proxy_lrm(fresh_host):
    spec = rk.describe("proxy", "lrm")
    names = {p.name for p in spec.params}
    assert {"latent_channels", "text_dim", "image_tower", "trainable"} <= names
    model = rk.proxy_model("lrm", **SMALL)
    assert isinstance(model, LatentRewardModel) and isinstance(model, ProxyRewardModel)


def test_save_and_load_round_trip(tmp_path):
    model = small(image_tower="vit", trainable="heads")
    with torch.no_grad():
        model.logit_scale.fill_(3.0)
    model.save_pretrained(tmp_path / "lrm")
    loaded = LatentRewardModel.from_pretrained(tmp_path / "lrm")
    assert loaded.config == model.config
    latents, embeds = torch.randn(2, 4, 10, 10), torch.randn(2, 7, TEXT_DIM)
    assert torch.equal(loaded(latents, embeds), model(latents, embeds))
    assert float(loaded.logit_scale) == 3.0
    overridden = LatentRewardModel.from_pretrained(tmp_path / "lrm", trainable="all")
    assert overridden.trainable == "all"
    assert torch.equal(overridden(latents, embeds), model(latents, embeds))


def test_from_pretrained_names_missing_folder(tmp_path):
    with pytest.raises(ConfigError, match="no saved proxy"):
        LatentRewardModel.from_pretrained(tmp_path / "nothing")


def test_mismatched_inputs_name_the_setting():
    model = small()
    with pytest.raises(ConfigError, match="text_dim"):
        model(torch.randn(2, 4, 8, 8), torch.randn(2, 7, TEXT_DIM + 1))
    with pytest.raises(ConfigError, match="latent_channels"):
        model(torch.randn(2, 3, 8, 8), torch.randn(2, 7, TEXT_DIM))
    with pytest.raises(ConfigError, match="one prompt embedding per latent"):
        model(torch.randn(2, 4, 8, 8), torch.randn(3, 7, TEXT_DIM))
    with pytest.raises(ConfigError, match="trainable"):
        small(trainable="some")
    with pytest.raises(ConfigError, match="image_tower"):
        small(image_tower="resnet")


def _names(model: LatentRewardModel, prefix: str) -> set[str]:
    return {n for n, _ in model.named_parameters() if n.startswith(prefix)}


@pytest.mark.parametrize("tower", ["conv", "vit"])
def test_trainable_sets(tower):
    heads = small(image_tower=tower, trainable="heads").trainable_parameter_names()
    expected_heads = ({"logit_scale"} | _names(small(image_tower=tower), "image_tower.head.")
                      | _names(small(image_tower=tower), "text_tower.head."))
    assert heads == expected_heads

    model = small(image_tower=tower, trainable="last")
    last = model.trainable_parameter_names()
    last_image_block = {n for n, p in model.named_parameters()
                        if any(p is q for q in model.image_tower.blocks[-1].parameters())}
    first_image_block = {n for n, p in model.named_parameters()
                         if any(p is q for q in model.image_tower.blocks[0].parameters())}
    assert last_image_block and last_image_block <= last
    assert not first_image_block & last
    assert heads < last
    assert _names(model, "text_tower.blocks.0.") <= last  # the last (only) text layer
    assert _names(model, "text_tower.pool.") <= last
    assert not _names(model, "text_tower.input_proj.") & last

    everything = {n for n, _ in model.named_parameters()}
    assert small(image_tower=tower, trainable="all").trainable_parameter_names() == everything
    assert small(image_tower=tower, trainable="none").trainable_parameter_names() == set()


@pytest.mark.parametrize("trainable", ["all", "heads", "last", "none"])
def test_freeze_unfreeze_toggle_exactly_the_trainable_set(trainable):
    model = small(trainable=trainable)
    assert not any(p.requires_grad for p in model.parameters())  # built frozen
    model.requires_grad_(True)  # what the reference did before every update
    model.unfreeze()
    unlocked = {n for n, p in model.named_parameters() if p.requires_grad}
    assert unlocked == model.trainable_parameter_names()
    model.freeze()
    assert not any(p.requires_grad for p in model.parameters())


def test_channels_last_latents_backpropagate():
    """UNet outputs may be channels_last; GroupNorm's CPU backward on those crashed torch."""
    model = small(trainable="all").unfreeze()
    latents = torch.randn(3, 4, 8, 8).contiguous(memory_format=torch.channels_last)
    latents.requires_grad_(True)
    model(latents, torch.randn(3, 7, TEXT_DIM)).sum().backward()
    assert latents.grad is not None and torch.isfinite(latents.grad).all()
    assert model.image_tower.stem.weight.grad is not None
