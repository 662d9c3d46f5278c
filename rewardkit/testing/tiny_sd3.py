"""A tiny Stable-Diffusion-3-architecture pipeline, built offline from configs.

:func:`build_tiny_sd3_pipeline` writes a real ``StableDiffusion3Pipeline`` folder
(``model_index.json``, ``transformer/``, ``vae/``, ``text_encoder/``, ``text_encoder_2/``,
``text_encoder_3/``, ``tokenizer/``, ``tokenizer_2/``, ``tokenizer_3/``, ``scheduler/``) with
random weights and SD3's structure: an MMDiT ``SD3Transformer2DModel`` (RMS-norm q/k and a
dual-attention block, as SD 3.5 Medium has), two CLIP text encoders with projections (their
pooled outputs, concatenated, are the transformer's ``pooled_projections``), a T5 encoder (or
none: ``t5=False`` saves ``text_encoder_3`` and ``tokenizer_3`` as ``null``, as
``from_pretrained(..., text_encoder_3=None)`` drops them), a 16-channel VAE with
``shift_factor`` and a ``FlowMatchEulerDiscreteScheduler`` with ``shift=3``. Tests load it through
exactly the ``from_pretrained`` path ``stabilityai/stable-diffusion-3.5-medium`` takes.

The T5 tokenizer is a small Unigram ``tokenizers`` model (every printable ASCII character is a
token, ``words`` are single tokens, ``</s>`` ends every sequence) saved as a ``T5TokenizerFast``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from .tiny_sd import DEFAULT_WORDS, write_tiny_clip_tokenizer

#: SD 3.5's VAE latent statistics (``scaling_factor``, ``shift_factor``).
SD3_VAE_SCALING, SD3_VAE_SHIFT = 1.5305, 0.0609


def write_tiny_t5_tokenizer(path: str | Path, words: Sequence[str] = DEFAULT_WORDS,
                            model_max_length: int = 256) -> Path:
    """Write a tiny ``T5TokenizerFast`` (``tokenizer.json`` and its config) to ``path``.

    Ids: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2 (as T5's), then ``words`` (each one token), then the
    printable ASCII characters, so any text tokenises. Returns ``path``.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + word.lower(), -1.0) for word in dict.fromkeys(words)]
    pieces += [(chr(code), -5.0) for code in range(33, 127)]
    model = Tokenizer(models.Unigram(pieces, unk_id=2))
    model.normalizer = normalizers.Lowercase()
    model.pre_tokenizer = pre_tokenizers.Metaspace()
    model.decoder = decoders.Metaspace()
    model.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    tokenizer = T5TokenizerFast(tokenizer_object=model, pad_token="<pad>", eos_token="</s>",
                                unk_token="<unk>", extra_ids=0, model_max_length=model_max_length)
    tokenizer.save_pretrained(path)
    return path


def build_tiny_sd3_pipeline(path: str | Path, sample_size: int = 8, seed: int = 0, *,
                            t5: bool = True, clip_widths: tuple[int, int] = (16, 16),
                            joint_attention_dim: int = 32, num_layers: int = 2,
                            num_attention_heads: int = 2, attention_head_dim: int = 8,
                            shift: float = 3.0, words: Sequence[str] = DEFAULT_WORDS) -> Path:
    """Build a tiny SD3-architecture pipeline with random weights and save it to ``path``.

    Args:
        path: output folder (created; existing files are overwritten).
        sample_size: latent side; images are twice as large (a two-block VAE).
        seed: seeds the random weights, so the same arguments give the same files.
        t5: include the T5 encoder; ``False`` saves the pipeline with ``text_encoder_3`` and
            ``tokenizer_3`` set to ``None`` (diffusers then feeds zeros for T5's tokens).
        clip_widths: hidden sizes of the two CLIP encoders (also their projection widths; the
            pooled conditioning is their concatenation). Their sum must not exceed
            ``joint_attention_dim``, as in SD3 (768 + 1280 <= 4096).
        joint_attention_dim: the width of the prompt tokens (T5's ``d_model``).
        num_layers, num_attention_heads, attention_head_dim: the transformer's size.
        shift: the scheduler's timestep shift (SD 3 / 3.5: 3.0).

    Returns the folder, loadable with ``diffusers.StableDiffusion3Pipeline.from_pretrained(path)``
    and :class:`rewardkit.backbones.stable_diffusion_3.StableDiffusion3Backbone`.
    """
    from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                           StableDiffusion3Pipeline)
    from transformers import (CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer, T5Config,
                              T5EncoderModel, T5TokenizerFast)

    if sum(clip_widths) > joint_attention_dim:
        raise ValueError(f"clip_widths {clip_widths} add up to more than joint_attention_dim "
                         f"{joint_attention_dim}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng():  # seeded weights without touching the caller's RNG
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(
            sample_size=sample_size, patch_size=2, in_channels=16, out_channels=16,
            num_layers=num_layers, attention_head_dim=attention_head_dim,
            num_attention_heads=num_attention_heads, joint_attention_dim=joint_attention_dim,
            caption_projection_dim=num_attention_heads * attention_head_dim,
            pooled_projection_dim=sum(clip_widths), pos_embed_max_size=sample_size,
            dual_attention_layers=(0,), qk_norm="rms_norm")
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=16,
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
            block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=32,
            sample_size=sample_size * 2, scaling_factor=SD3_VAE_SCALING,
            shift_factor=SD3_VAE_SHIFT, use_quant_conv=False, use_post_quant_conv=False)
        clips = []
        for name, width in zip(("tokenizer", "tokenizer_2"), clip_widths):
            write_tiny_clip_tokenizer(path / name, words)
            tokenizer = CLIPTokenizer.from_pretrained(path / name)
            encoder = CLIPTextModelWithProjection(CLIPTextConfig(
                vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width,
                num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, projection_dim=width, hidden_act="gelu"))
            clips.append((tokenizer, encoder))
        tokenizer_3 = text_encoder_3 = None
        if t5:
            write_tiny_t5_tokenizer(path / "tokenizer_3", words)
            tokenizer_3 = T5TokenizerFast.from_pretrained(path / "tokenizer_3")
            text_encoder_3 = T5EncoderModel(T5Config(
                vocab_size=len(tokenizer_3), d_model=joint_attention_dim, d_kv=8,
                d_ff=2 * joint_attention_dim, num_layers=1, num_heads=2,
                relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                decoder_start_token_id=0))
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=scheduler, vae=vae,
        text_encoder=clips[0][1], tokenizer=clips[0][0],
        text_encoder_2=clips[1][1], tokenizer_2=clips[1][0],
        text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3)
    pipe.save_pretrained(path, safe_serialization=True)
    return path


__all__ = ["build_tiny_sd3_pipeline", "write_tiny_t5_tokenizer"]
