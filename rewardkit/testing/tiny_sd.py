"""A tiny Stable-Diffusion-architecture pipeline, built offline from configs.

:func:`build_tiny_sd_pipeline` writes a real diffusers folder (``model_index.json``, ``unet/``,
``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``) with random weights, so tests load it
through exactly the ``from_pretrained`` path a user's ``stabilityai/stable-diffusion-2-1`` takes,
without touching the network. The sizes are configurable, so the same builder also makes a small
*trainable* teacher (the embedded world uses it that way).

The tokenizer is a genuine byte-level BPE ``CLIPTokenizer`` written from a small ``vocab.json`` and
``merges.txt``: every byte is a token (so any text tokenises), optional ``words`` get merges that
make them single tokens, and ``<|startoftext|>`` / ``<|endoftext|>`` are bos, eos and pad as in
SD 1.x.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

#: Words merged into single tokens by default (enough for readable test prompts).
DEFAULT_WORDS: tuple[str, ...] = (
    "a", "an", "the", "of", "photo", "red", "green", "blue", "circle", "square", "cat", "dog",
)
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode map."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def write_tiny_clip_tokenizer(path: str | Path, words: Sequence[str] = DEFAULT_WORDS,
                              model_max_length: int = 77) -> Path:
    """Write a byte-level BPE ``CLIPTokenizer`` (vocab.json, merges.txt, configs) to ``path``.

    The vocabulary follows CLIP's layout: the 256 byte symbols, the same with ``</w>`` (end of
    word), one token per merge, then bos and eos. The merges are learned by BPE on ``words``, so
    every one of them tokenises to a single token. Returns ``path``.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    symbols = list(_bytes_to_unicode().values())
    vocab: list[str] = symbols + [s + "</w>" for s in symbols]
    known = set(vocab)
    merges = _learn_merges(words)
    for a, b in merges:
        if a + b not in known:
            known.add(a + b)
            vocab.append(a + b)
    vocab += [BOS_TOKEN, EOS_TOKEN]
    (path / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}),
                                     encoding="utf-8")
    (path / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    (path / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": EOS_TOKEN,
         "unk_token": EOS_TOKEN}), encoding="utf-8")
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "CLIPTokenizer", "model_max_length": model_max_length,
         "bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": EOS_TOKEN,
         "unk_token": EOS_TOKEN, "do_lower_case": True}), encoding="utf-8")
    return path


def _learn_merges(words: Sequence[str]) -> list[tuple[str, str]]:
    """BPE training on ``words``: merge the most frequent adjacent pair until each word is one symbol.

    Applying merges in this learned order segments every training word exactly as training did,
    so each word becomes one token, whatever the word order (ties break by first occurrence).
    """
    byte_map = _bytes_to_unicode()
    segmented = []
    for word in dict.fromkeys(w.lower() for w in words if w):
        parts = [byte_map[b] for b in word.encode("utf-8")]
        parts[-1] += "</w>"
        segmented.append(parts)
    merges: list[tuple[str, str]] = []
    while True:
        counts: dict[tuple[str, str], int] = {}
        for parts in segmented:
            for pair in zip(parts, parts[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            return merges
        best = max(counts, key=counts.__getitem__)  # dicts keep first-seen order for ties
        merges.append(best)
        for index, parts in enumerate(segmented):
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            segmented[index] = merged


def build_tiny_sd_pipeline(
    path: str | Path,
    prediction_type: str = "epsilon",
    sample_size: int = 8,
    seed: int = 0,
    *,
    unet_block_out_channels: Sequence[int] = (32, 64),
    layers_per_block: int = 1,
    attention_head_dim: int | Sequence[int] = 8,
    cross_attention_dim: int = 32,
    text_layers: int = 2,
    text_heads: int = 4,
    text_intermediate_size: int = 64,
    vae_block_out_channels: Sequence[int] = (32, 64),
    latent_channels: int = 4,
    norm_num_groups: int = 32,
    vae_scaling_factor: float = 0.18215,
    model_max_length: int = 77,
    words: Sequence[str] = DEFAULT_WORDS,
    time_cond_proj_dim: int | None = None,
) -> Path:
    """Build a tiny SD-2.x-architecture pipeline with random weights and save it to ``path``.

    Args:
        path: output folder (created; existing files are overwritten).
        prediction_type: ``"epsilon"`` or ``"v_prediction"`` (written to the scheduler config).
        sample_size: latent side; images are ``sample_size * 2 ** (len(vae_block_out_channels)-1)``.
        seed: seeds the random weights, so the same arguments give the same files.
        vae_scaling_factor: written to the VAE config (SD: 0.18215).
        model_max_length: tokenizer length and the text encoder's position count.
        words: words that become single tokens (any other text falls back to bytes).
        time_cond_proj_dim: give the UNet a guidance embedding (to fake an already distilled
            student); ``None`` for a teacher.

    The keyword arguments from ``unet_block_out_channels`` to ``norm_num_groups`` are model
    sizes (defaults: a few hundred thousand parameters, saved and loaded in well under a second).

    Returns the folder, loadable with ``diffusers.DiffusionPipeline.from_pretrained(path)`` and
    :class:`rewardkit.backbones.stable_diffusion.StableDiffusionBackbone`.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    if prediction_type not in ("epsilon", "v_prediction", "sample"):
        raise ValueError(f"prediction_type must be 'epsilon', 'v_prediction' or 'sample', "
                         f"got {prediction_type!r}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    n_blocks = len(unet_block_out_channels)
    # The last down block has no cross-attention in SD; with two blocks keep one of each kind.
    down = tuple(["CrossAttnDownBlock2D"] * (n_blocks - 1) + ["DownBlock2D"])
    up = tuple(["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (n_blocks - 1))
    with torch.random.fork_rng():  # seeded weights without touching the caller's RNG
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=sample_size, in_channels=latent_channels, out_channels=latent_channels,
            down_block_types=down, up_block_types=up,
            block_out_channels=tuple(unet_block_out_channels), layers_per_block=layers_per_block,
            attention_head_dim=attention_head_dim, cross_attention_dim=cross_attention_dim,
            norm_num_groups=norm_num_groups, use_linear_projection=True,  # as in SD 2.x
            time_cond_proj_dim=time_cond_proj_dim,
        )
        vae_blocks = len(vae_block_out_channels)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=latent_channels,
            down_block_types=("DownEncoderBlock2D",) * vae_blocks,
            up_block_types=("UpDecoderBlock2D",) * vae_blocks,
            block_out_channels=tuple(vae_block_out_channels), layers_per_block=1,
            norm_num_groups=norm_num_groups, sample_size=sample_size * 2 ** (vae_blocks - 1),
            scaling_factor=vae_scaling_factor,
        )
        write_tiny_clip_tokenizer(path / "tokenizer", words, model_max_length)
        tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer")
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=cross_attention_dim,
            intermediate_size=text_intermediate_size, num_hidden_layers=text_layers,
            num_attention_heads=text_heads, max_position_embeddings=model_max_length,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, projection_dim=cross_attention_dim,
            hidden_act="gelu",
        ))
    scheduler = DDPMScheduler(  # SD 2.1's training schedule
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type=prediction_type, clip_sample=False, steps_offset=1,
        timestep_spacing="leading",
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(path, safe_serialization=True)
    return path
