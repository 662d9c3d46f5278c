"""A tiny Stable-Diffusion-XL-architecture pipeline, built offline from configs.

:func:`build_tiny_sdxl_pipeline` writes a real ``StableDiffusionXLPipeline`` folder
(``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ``text_encoder_2/``,
``tokenizer/``, ``tokenizer_2/``, ``scheduler/``) with random weights and SDXL's structure: two
CLIP text encoders (the second with a projection, whose pooled output conditions the UNet), a
UNet with ``addition_embed_type="text_time"`` (pooled text embedding plus the six size/crop ids),
an ``EulerDiscreteScheduler`` and VAE scaling 0.13025. Tests load it through exactly the
``from_pretrained`` path ``stabilityai/stable-diffusion-xl-base-1.0`` takes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from .tiny_sd import DEFAULT_WORDS, write_tiny_clip_tokenizer

#: SDXL's ``add_time_ids``: original size (2), crop top-left (2), target size (2).
TIME_IDS = 6


def build_tiny_sdxl_pipeline(path: str | Path, prediction_type: str = "epsilon",
                             sample_size: int = 8, seed: int = 0, *,
                             text_widths: tuple[int, int] = (16, 32),
                             unet_block_out_channels: Sequence[int] = (32, 64),
                             addition_time_embed_dim: int = 8,
                             words: Sequence[str] = DEFAULT_WORDS) -> Path:
    """Build a tiny SDXL-architecture pipeline with random weights and save it to ``path``.

    ``text_widths``: hidden sizes of the two text encoders; their penultimate states are
    concatenated, so the UNet's cross-attention width is their sum, and the second encoder's
    projection (its pooled ``text_embeds``) has its width. Returns the folder, loadable with
    ``diffusers.StableDiffusionXLPipeline.from_pretrained(path)`` and
    :class:`rewardkit.backbones.stable_diffusion_xl.StableDiffusionXLBackbone`.
    """
    from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline,
                           UNet2DConditionModel)
    from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection,
                              CLIPTokenizer)

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    width_1, width_2 = text_widths
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=sample_size, in_channels=4, out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=tuple(unet_block_out_channels), layers_per_block=1,
            attention_head_dim=(2, 4), cross_attention_dim=width_1 + width_2,
            norm_num_groups=32, use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=addition_time_embed_dim,
            projection_class_embeddings_input_dim=width_2 + TIME_IDS * addition_time_embed_dim,
            transformer_layers_per_block=(1, 1),
        )
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4,
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
            block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=32,
            sample_size=sample_size * 2, scaling_factor=0.13025,
        )
        encoders = []
        for name, width, cls in (("tokenizer", width_1, CLIPTextModel),
                                 ("tokenizer_2", width_2, CLIPTextModelWithProjection)):
            write_tiny_clip_tokenizer(path / name, words)
            tokenizer = CLIPTokenizer.from_pretrained(path / name)
            encoder = cls(CLIPTextConfig(
                vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width,
                num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, projection_dim=width, hidden_act="gelu"))
            encoders.append((tokenizer, encoder))
    scheduler = EulerDiscreteScheduler(  # SDXL base's
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type=prediction_type, steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=encoders[0][1], text_encoder_2=encoders[1][1],
        tokenizer=encoders[0][0], tokenizer_2=encoders[1][0], unet=unet, scheduler=scheduler)
    pipe.save_pretrained(path, safe_serialization=True)
    return path


__all__ = ["build_tiny_sdxl_pipeline"]
