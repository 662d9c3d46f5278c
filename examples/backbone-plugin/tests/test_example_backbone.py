"""The example backbone on a tiny SD teacher and a tiny AutoencoderTiny, built offline."""

from __future__ import annotations

import pytest
import torch

import rewardkit as rk
from rewardkit.errors import ConfigError
from rewardkit.testing import build_tiny_sd_pipeline, check_backbone
from rewardkit_example_backbone import TinyDecoderBackbone


def build_tiny_taesd(path):
    from diffusers import AutoencoderTiny

    with torch.random.fork_rng():
        torch.manual_seed(0)
        AutoencoderTiny(encoder_block_out_channels=(16, 16), decoder_block_out_channels=(16, 16),
                        num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("taesd")
    return build_tiny_sd_pipeline(root / "teacher"), build_tiny_taesd(root / "taesd")


def test_meets_the_backbone_contract(folders, tmp_path):
    teacher, taesd = folders
    check_backbone(TinyDecoderBackbone(str(teacher), tiny_vae=str(taesd)), tmp_path)


def test_decodes_with_the_tiny_autoencoder_not_the_vae(folders):
    from diffusers import AutoencoderTiny

    teacher, taesd = folders
    backbone = TinyDecoderBackbone(str(teacher), tiny_vae=str(taesd))
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = (AutoencoderTiny.from_pretrained(taesd).decode(latents).sample / 2 + 0.5).clamp(0, 1)
        torch.testing.assert_close(backbone.decode_latents(latents), expected)
        full = backbone.vae.decode(latents / backbone.vae_scaling_factor).sample
    assert not torch.allclose(backbone.decode_latents(latents), (full / 2 + 0.5).clamp(0, 1))


def test_registered_through_the_backbone_hook_and_bad_input_named(folders, tmp_path):
    teacher, taesd = folders
    spec = rk.describe("backbone", "sd-taesd")
    assert spec.factory is TinyDecoderBackbone and "tiny_vae" in {p.name for p in spec.params}
    with pytest.raises(ConfigError, match="tiny_vae"):
        TinyDecoderBackbone(str(teacher), tiny_vae=str(tmp_path / "missing"))
