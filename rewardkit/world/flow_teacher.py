"""Training the world's flow-matching teacher: a small MMDiT in diffusers' SD3 format.

The flow teacher is a ``StableDiffusion3Pipeline`` folder, so it loads through the
``stable-diffusion-3`` backbone exactly as SD 3 / 3.5 do. It reuses what the world's UNet teacher
already learned, where the SD3 format allows:

- the **VAE** is the world teacher's trained ``AutoencoderKL`` (4 latent channels, its
  ``scaling_factor``; ``shift_factor`` 0), unchanged: SD3 reads the channel count from the
  transformer, which is built for 4;
- both **CLIP encoders** are the world teacher's frozen text encoder, as a
  ``CLIPTextModelWithProjection`` (the same weights plus an identity projection, so the pooled
  projection is the final hidden state at the end token), saved as ``text_encoder`` and
  ``text_encoder_2`` with the world tokenizer; **T5 is left out** (``text_encoder_3=None``).
  Without T5, diffusers feeds ``max_sequence_length`` zero tokens in its place; the world teacher
  is trained with :data:`MAX_SEQUENCE_LENGTH` (1) of them, so sample it with the same value
  (``pipe(..., max_sequence_length=1)`` in plain diffusers; the folder's ``sampling.json`` records
  it, so the backbone and rewardkit's samplers use it by themselves: :mod:`rewardkit.call_defaults`).

Only the transformer (``SD3Transformer2DModel``, patch size 1 on the 8x8 latents) is trained:
rectified flow ``z_s = (1 - s) x0 + s eps`` with velocity target ``eps - x0`` and the noise levels
SD3 trains with (a logit-normal ``u`` through the scheduler's shift, 1.0 for 32 px images),
10% caption dropout to the empty prompt (for classifier-free guidance), AdamW with warm-up and a
cosine decay over whichever of the step cap and the time budget runs out first, and an EMA of the
weights (what is saved). The conditioning is the backbone's own (``encode_prompts``), computed
once per distinct caption.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..call_defaults import write_call_defaults
from ..errors import ConfigError
from .teacher import (IMAGE_SIDE, Progress, StageStats, _record, _Schedule, _set_lr, encode_pool,
                      render_pool)

#: T5 tokens (zeros: the world flow teacher has no T5) per prompt; sample with the same value.
MAX_SEQUENCE_LENGTH = 1
#: The backbone keys that load the world flow teacher.
BACKBONE = "stable-diffusion-3"
BACKBONE_PARAMS: dict[str, Any] = {"max_sequence_length": MAX_SEQUENCE_LENGTH}


@dataclass(frozen=True)
class FlowTeacherSize:
    """Architecture of the flow teacher's ``SD3Transformer2DModel``."""

    num_layers: int = 4
    num_attention_heads: int = 4
    attention_head_dim: int = 32
    patch_size: int = 1


@dataclass(frozen=True)
class FlowTeacherPlan:
    """How long and how hard the flow teacher trains (a step cap *and* a time budget)."""

    size: FlowTeacherSize = field(default_factory=FlowTeacherSize)
    pool_images: int = 20_000  # rendered training images, encoded once by the world's VAE
    steps: int = 6_000  # a cap: on 2 busy cores the 40-minute budget ends training first
    batch_size: int = 64
    lr: float = 1e-3
    seconds: float = 2_400.0
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    warmup_steps: int = 200
    shift: float = 1.0
    store_half: bool = True  # transformer and VAE as float16 in the saved folder


@dataclass
class FlowTeacherResult:
    """The saved flow teacher and what training it took."""

    path: Path
    stats: StageStats
    parameters: int
    plan: dict

    def summary(self) -> dict:
        """JSON-ready numbers (the loss curve included)."""
        return {"path": str(self.path), "parameters": self.parameters,
                "transformer": asdict(self.stats), "plan": self.plan,
                "backbone": BACKBONE, "backbone_params": dict(BACKBONE_PARAMS)}


def projection_encoder(encoder: nn.Module) -> nn.Module:
    """``encoder`` (a ``CLIPTextModel``) as a ``CLIPTextModelWithProjection`` with the same
    weights and an identity projection (what SD3's pipeline needs for its pooled projections)."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    values = encoder.config.to_dict()
    values["projection_dim"] = encoder.config.hidden_size
    model = CLIPTextModelWithProjection(CLIPTextConfig(**values))
    # CLIPTextModel nests its weights under text_model in some transformers versions, not others
    state = {k.removeprefix("text_model."): v for k, v in encoder.state_dict().items()}
    model.text_model.load_state_dict(state)
    with torch.no_grad():
        model.text_projection.weight.copy_(torch.eye(encoder.config.hidden_size))
    return model.eval().requires_grad_(False)


def _transformer(size: FlowTeacherSize, side: int, channels: int, text_width: int) -> nn.Module:
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        sample_size=side, patch_size=size.patch_size, in_channels=channels, out_channels=channels,
        num_layers=size.num_layers, attention_head_dim=size.attention_head_dim,
        num_attention_heads=size.num_attention_heads, joint_attention_dim=2 * text_width,
        caption_projection_dim=size.num_attention_heads * size.attention_head_dim,
        pooled_projection_dim=2 * text_width, pos_embed_max_size=side // size.patch_size,
        qk_norm="rms_norm")


def save_flow_pipeline(path: Path, transformer: nn.Module, vae: nn.Module, text_encoder: nn.Module,
                       tokenizer: Any, shift: float, half: bool = False) -> Path:
    """Write a ``StableDiffusion3Pipeline`` folder (two copies of the CLIP encoder, no T5)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    dtype = torch.float16 if half else torch.float32
    pipe = StableDiffusion3Pipeline(
        transformer=copy.deepcopy(transformer).to(dtype), vae=copy.deepcopy(vae).to(dtype),
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift),
        text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder,
        tokenizer_2=tokenizer, text_encoder_3=None, tokenizer_3=None)
    pipe.save_pretrained(path, safe_serialization=True)
    write_call_defaults(path, {"max_sequence_length": MAX_SEQUENCE_LENGTH})
    return path


def _world_parts(source: Path) -> tuple[nn.Module, nn.Module, Any]:
    """The world UNet teacher's VAE (fp32, ``shift_factor`` 0), text encoder and tokenizer."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    if not (source / "vae").is_dir() or not (source / "text_encoder").is_dir():
        raise ConfigError(f"'{source}' is not a world teacher folder (it needs vae/ and "
                          "text_encoder/); build the world first with `rewardkit world build`")
    vae = AutoencoderKL.from_pretrained(source / "vae", torch_dtype=torch.float32)
    vae.register_to_config(shift_factor=0.0)
    vae.eval().requires_grad_(False)
    encoder = CLIPTextModel.from_pretrained(source / "text_encoder", torch_dtype=torch.float32)
    return vae, projection_encoder(encoder), CLIPTokenizer.from_pretrained(source / "tokenizer")


def flow_levels(u: torch.Tensor, shift: float) -> torch.Tensor:
    """The scheduler's shifted noise level ``s = shift u / (1 + (shift - 1) u)`` of ``u``."""
    return shift * u / (1 + (shift - 1) * u)


def train_transformer(transformer: nn.Module, latents: tuple[torch.Tensor, torch.Tensor],
                      caption_index: torch.Tensor, embeds: torch.Tensor, pooled: torch.Tensor,
                      plan: FlowTeacherPlan, seed: int = 0,
                      progress: Progress | None = None) -> tuple[nn.Module, StageStats]:
    """Flow-matching training of ``transformer`` on scaled latents ``(means, stds)``; the EMA
    copy and the stats. Image ``i`` is conditioned on ``embeds``/``pooled`` row
    ``caption_index[i]``; the last row is the empty prompt (caption dropout)."""
    generator = torch.Generator().manual_seed(seed)
    means, stds = latents
    empty = len(embeds) - 1
    transformer.train().requires_grad_(True)
    ema = copy.deepcopy(transformer).eval().requires_grad_(False)
    optimiser = torch.optim.AdamW(transformer.parameters(), lr=plan.lr, weight_decay=1e-2)
    schedule = _Schedule(plan.steps, plan.seconds, plan.warmup_steps)
    losses: list[float] = []
    running: list[float] = []
    step, batch = 0, plan.batch_size
    while step < plan.steps and schedule.progress(step) < 1.0:
        _set_lr(optimiser, plan.lr * schedule.factor(step))
        index = torch.randint(0, len(means), (batch,), generator=generator)
        x0 = means[index] + stds[index] * torch.randn(means[index].shape, generator=generator)
        if torch.rand((), generator=generator) < 0.5:
            x0 = x0.flip(-1)  # every world shape is mirror-symmetric
        rows = caption_index[index]
        dropped = torch.rand(batch, generator=generator) < plan.caption_dropout
        rows = torch.where(dropped, torch.full_like(rows, empty), rows)
        noise = torch.randn(x0.shape, generator=generator)
        s = flow_levels(torch.sigmoid(torch.randn(batch, generator=generator)), plan.shift)
        noisy = (1 - s)[:, None, None, None] * x0 + s[:, None, None, None] * noise
        velocity = transformer(hidden_states=noisy, timestep=1000 * s,
                               encoder_hidden_states=embeds[rows], pooled_projections=pooled[rows],
                               return_dict=False)[0]
        loss = (velocity - (noise - x0)).pow(2).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        optimiser.step()
        step += 1
        decay = min(plan.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for target, source in zip(ema.parameters(), transformer.parameters()):
                target.lerp_(source, 1 - decay)
        running.append(float(loss.detach()))
        _record(losses, running, step, plan.steps)
        if progress:
            progress(step, schedule.expected_steps(step), float(loss.detach()))
    transformer.eval().requires_grad_(False)
    final = losses[-1] if losses else (running[-1] if running else float("nan"))
    return ema, StageStats(step, schedule.elapsed(), final, losses)


def train_flow_teacher(path: str | Path, source: str | Path,
                       plan: FlowTeacherPlan = FlowTeacherPlan(), seed: int = 0,
                       progress: Progress | None = None,
                       untrained_path: str | Path | None = None) -> FlowTeacherResult:
    """Train the flow teacher on the world and save it at ``path`` (see the module docstring).

    ``source`` is the world's UNet teacher folder (its VAE and text encoder are reused).
    ``untrained_path``, if given, receives the same pipeline with the untrained transformer.
    """
    from ..backbones.stable_diffusion_3 import StableDiffusion3Backbone
    from ..backbones.conditioning import Conditioning

    path, source = Path(path), Path(source)
    vae, text_encoder, tokenizer = _world_parts(source)
    side = IMAGE_SIDE // 2 ** (len(vae.config.block_out_channels) - 1)
    if side % plan.size.patch_size:
        raise ConfigError(f"the flow teacher's patch size {plan.size.patch_size} does not divide "
                          f"the world's {side}x{side} latents")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        transformer = _transformer(plan.size, side, int(vae.config.latent_channels),
                                   int(text_encoder.config.hidden_size))
    save_flow_pipeline(path, transformer, vae, text_encoder, tokenizer, plan.shift)
    if untrained_path is not None:
        save_flow_pipeline(Path(untrained_path), transformer, vae, text_encoder, tokenizer,
                           plan.shift, plan.store_half)
    backbone = StableDiffusion3Backbone(str(path), **BACKBONE_PARAMS)  # the conditioning it feeds

    pixels, captions = render_pool(plan.pool_images)
    means, stds = encode_pool(vae, pixels)
    scaling = float(vae.config.scaling_factor)
    distinct = sorted(set(captions))
    caption_index = torch.tensor([distinct.index(c) for c in captions])
    chunks = [backbone.encode_prompts(distinct[i:i + 256]) for i in range(0, len(distinct), 256)]
    cond = Conditioning.cat(chunks + [backbone.empty_conditioning(1)])  # the empty prompt last
    ema, stats = train_transformer(transformer, (means * scaling, stds * scaling), caption_index,
                                   cond.prompt_embeds.float(),
                                   cond.added["pooled_projections"].float(), plan, seed, progress)
    save_flow_pipeline(path, ema, vae, text_encoder, tokenizer, plan.shift, plan.store_half)
    return FlowTeacherResult(path, stats, sum(p.numel() for p in ema.parameters()), asdict(plan))


__all__ = ["BACKBONE", "BACKBONE_PARAMS", "FlowTeacherPlan", "FlowTeacherResult",
           "FlowTeacherSize", "MAX_SEQUENCE_LENGTH", "flow_levels", "projection_encoder",
           "save_flow_pipeline", "train_flow_teacher", "train_transformer"]
