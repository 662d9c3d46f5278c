"""Stable Diffusion 2.1, SDXL and CLIP ViT-H/14 architectures built from their configs, with random weights.

The configs are those of ``stabilityai/stable-diffusion-2-1`` (768-px, v-prediction),
``stabilityai/stable-diffusion-xl-base-1.0`` and ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (the
RG-LCD reference's CLIP, the size of HPSv2's model), written out here because no weights can be
downloaded where the checks run. :func:`build_architecture` saves a complete diffusers pipeline
folder (or a transformers CLIP folder), so the memory and speed checks load it through the very
``from_pretrained`` path a real checkpoint takes.

``scale="tiny"`` keeps every structural choice (block types, attention layout, SDXL's two text
encoders and ``text_time`` embedding, the VAE's four levels) and shrinks the widths and depths,
so the same code runs on a CPU in seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .tiny_sd import write_tiny_clip_tokenizer

SCALES = ("full", "tiny")
ARCHITECTURES = ("sd21", "sdxl", "clip-vit-h")


def _sd21_unet(scale: str) -> dict[str, Any]:
    full = scale == "full"
    return dict(
        sample_size=96 if full else 8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(320, 640, 1280, 1280) if full else (32, 64, 64, 64),
        layers_per_block=2 if full else 1,
        # diffusers' attention_head_dim of SD 2.x is the number of heads per block
        attention_head_dim=(5, 10, 20, 20) if full else (1, 2, 2, 2),
        cross_attention_dim=1024 if full else 32, use_linear_projection=True,
        upcast_attention=full, norm_num_groups=32)


def _sdxl_unet(scale: str) -> dict[str, Any]:
    full = scale == "full"
    time_embed = 256 if full else 8
    pooled = 1280 if full else 32
    return dict(
        sample_size=128 if full else 8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(320, 640, 1280) if full else (32, 64, 64),
        layers_per_block=2 if full else 1,
        attention_head_dim=(5, 10, 20) if full else (1, 2, 2),
        transformer_layers_per_block=(1, 2, 10) if full else (1, 1, 2),
        cross_attention_dim=2048 if full else 48, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=time_embed,
        projection_class_embeddings_input_dim=pooled + 6 * time_embed, norm_num_groups=32)


def _vae(scale: str, sample_size: int, scaling_factor: float) -> dict[str, Any]:
    full = scale == "full"
    return dict(in_channels=3, out_channels=3, latent_channels=4,
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4,
                block_out_channels=(128, 256, 512, 512) if full else (32, 32, 32, 32),
                layers_per_block=2 if full else 1, norm_num_groups=32,
                sample_size=sample_size, scaling_factor=scaling_factor)


def _text(scale: str, full: dict[str, Any], tiny_width: int) -> dict[str, Any]:
    if scale == "full":
        return dict(vocab_size=49408, max_position_embeddings=77, **full)
    return dict(vocab_size=49408, max_position_embeddings=77, hidden_size=tiny_width,
                intermediate_size=2 * tiny_width, num_hidden_layers=2, num_attention_heads=2,
                projection_dim=tiny_width, hidden_act=full["hidden_act"])


#: The text towers at full size (transformers' CLIPTextConfig fields).
OPENCLIP_H_TEXT = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                       num_attention_heads=16, projection_dim=512, hidden_act="gelu")
CLIP_L_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                   num_attention_heads=12, projection_dim=768, hidden_act="quick_gelu")
OPENCLIP_BIGG_TEXT = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                          num_attention_heads=20, projection_dim=1280, hidden_act="gelu")


def architecture_configs(name: str, scale: str = "full") -> dict[str, dict[str, Any]]:
    """The component configs of architecture ``name`` (``sd21``, ``sdxl``, ``clip-vit-h``) at
    ``scale``: keyword arguments of the diffusers / transformers config classes, by folder."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    if name == "sd21":
        unet = _sd21_unet(scale)
        return {"unet": unet, "vae": _vae(scale, unet["sample_size"] * 8, 0.18215),
                "text_encoder": _text(scale, OPENCLIP_H_TEXT, 32)}
    if name == "sdxl":
        unet = _sdxl_unet(scale)
        return {"unet": unet, "vae": _vae(scale, unet["sample_size"] * 8, 0.13025),
                "text_encoder": _text(scale, CLIP_L_TEXT, 16),
                "text_encoder_2": _text(scale, OPENCLIP_BIGG_TEXT, 32)}
    if name == "clip-vit-h":
        full = scale == "full"
        return {"text": _text(scale, dict(OPENCLIP_H_TEXT, num_hidden_layers=24,
                                          projection_dim=1024), 32),
                "vision": dict(image_size=224 if full else 32, patch_size=14 if full else 8,
                               hidden_size=1280 if full else 32,
                               intermediate_size=5120 if full else 64,
                               num_hidden_layers=32 if full else 2,
                               num_attention_heads=16 if full else 2,
                               projection_dim=1024 if full else 32, hidden_act="gelu"),
                "projection_dim": {"value": 1024 if full else 32}}
    raise ValueError(f"unknown architecture {name!r}; one of {', '.join(ARCHITECTURES)}")


def build_architecture(name: str, path: str | Path, *, scale: str = "full",
                       device: str | torch.device = "cpu", dtype: torch.dtype = torch.bfloat16,
                       seed: int = 0) -> Path:
    """Build architecture ``name`` at ``scale`` with random weights and save it to ``path``.

    Weights are initialised on ``device`` (a GPU initialises a full SDXL UNet in a second) and
    saved as safetensors in ``dtype``. ``sd21`` and ``sdxl`` give diffusers pipeline folders that
    :class:`~rewardkit.backbones.stable_diffusion.StableDiffusionBackbone` (or the XL one) loads;
    ``clip-vit-h`` gives a CLIP folder the ``clip-score`` reward model loads. Returns ``path``.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    configs = architecture_configs(name, scale)
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        if name == "clip-vit-h":
            return _build_clip(path, configs, dtype)
        return _build_pipeline(name, path, configs, dtype)


def _tokenizer(path: Path):
    from transformers import CLIPTokenizer

    write_tiny_clip_tokenizer(path)
    return CLIPTokenizer.from_pretrained(path)


def _text_model(cls: Any, tokenizer: Any, config: dict[str, Any], dtype: torch.dtype) -> Any:
    from transformers import CLIPTextConfig

    return cls(CLIPTextConfig(bos_token_id=tokenizer.bos_token_id,
                              eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id, **config)).to(dtype)


def _build_pipeline(name: str, path: Path, configs: dict[str, dict[str, Any]],
                    dtype: torch.dtype) -> Path:
    from diffusers import (AutoencoderKL, DDPMScheduler, EulerDiscreteScheduler,
                           StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel)
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    unet = UNet2DConditionModel(**configs["unet"]).to(dtype)
    vae = AutoencoderKL(**configs["vae"]).to(dtype)
    tokenizer = _tokenizer(path / "tokenizer")
    text_encoder = _text_model(CLIPTextModel, tokenizer, configs["text_encoder"], dtype)
    schedule = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                    beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading")
    if name == "sd21":
        pipe = StableDiffusionPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
            scheduler=DDPMScheduler(prediction_type="v_prediction", clip_sample=False, **schedule),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    else:
        tokenizer_2 = _tokenizer(path / "tokenizer_2")
        text_encoder_2 = _text_model(CLIPTextModelWithProjection, tokenizer_2,
                                     configs["text_encoder_2"], dtype)
        pipe = StableDiffusionXLPipeline(
            vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
            tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet,
            scheduler=EulerDiscreteScheduler(prediction_type="epsilon", **schedule))
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def _build_clip(path: Path, configs: dict[str, dict[str, Any]], dtype: torch.dtype) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    tokenizer = _tokenizer(path)
    text = CLIPTextConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id, **configs["text"])
    vision = CLIPVisionConfig(**configs["vision"])
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                        projection_dim=configs["projection_dim"]["value"])
    CLIPModel(config).to(dtype).eval().save_pretrained(path)
    side = configs["vision"]["image_size"]
    CLIPImageProcessor(size={"shortest_edge": side},
                       crop_size={"height": side, "width": side}).save_pretrained(path)
    return path


def parameter_counts(name: str, scale: str = "full") -> dict[str, int]:
    """Parameters per component of architecture ``name``, counted on the meta device (no memory)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import (CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel,
                              CLIPTextModelWithProjection, CLIPVisionConfig)

    configs = architecture_configs(name, scale)
    counts = {}
    with torch.device("meta"):
        for part, config in configs.items():
            if part == "unet":
                module = UNet2DConditionModel(**config)
            elif part == "vae":
                module = AutoencoderKL(**config)
            elif part.startswith("text_encoder"):
                cls = CLIPTextModelWithProjection if part == "text_encoder_2" else CLIPTextModel
                module = cls(CLIPTextConfig(**config))
            elif part == "text":
                vision = CLIPVisionConfig(**configs["vision"])
                module = CLIPModel(CLIPConfig(text_config=CLIPTextConfig(**config).to_dict(),
                                              vision_config=vision.to_dict()))
                part = "clip"
            else:
                continue
            counts[part] = sum(p.numel() for p in module.parameters())
    return counts


__all__ = ["ARCHITECTURES", "SCALES", "architecture_configs", "build_architecture",
           "parameter_counts"]
