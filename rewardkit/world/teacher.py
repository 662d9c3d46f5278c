"""Training the world's small teacher: a latent diffusion model in diffusers' Stable Diffusion format.

The teacher starts as :func:`rewardkit.testing.tiny_sd.build_tiny_sd_pipeline` (an SD-2.x
architecture built offline from configs) sized for the world: 32x32 images, a three-level
``AutoencoderKL`` (32 -> 8x8x4 latents), a small CLIP text encoder whose vocabulary holds every
word of the world grammar as one token, and a small ``UNet2DConditionModel``. Then, in order:

1. the VAE learns to reconstruct world images (L1 + L2 + a small KL term), and its
   ``scaling_factor`` is set to ``1 / std`` of the latents, as SD's 0.18215 was;
2. the text encoder stays frozen with its random weights (SD keeps CLIP frozen too; here every
   caption word is one token, so random embeddings already tell the words apart), and the
   embeddings of the few hundred training captions are computed once;
3. the UNet learns epsilon prediction on DDPM's ``scaled_linear`` schedule with min-SNR loss
   weights, 10% caption dropout to the empty prompt (for classifier-free guidance), AdamW, a
   warm-up + cosine learning rate and an EMA of the weights (the EMA is what ships).

The result is saved with ``StableDiffusionPipeline.save_pretrained(safe_serialization=True)``
(UNet and VAE stored in float16 to keep the shipped folder small; they load as float32 through
``torch_dtype``/the backbone's ``dtype``), so it loads through the same ``stable-diffusion``
backbone code path as SD 2.1. Every training stage has a step count *and* a time budget: the
learning-rate schedule follows whichever runs out first, so a busy machine trains fewer steps
but still ends with a decayed learning rate.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .grammar import BACKGROUNDS, COLOURS, COUNTS, SHAPES, SIZES, make_splits
from .source import WorldSource

#: ``progress(done, total, loss)`` after every optimiser step.
Progress = Callable[[int, int, float], None]
#: Image side of the world teacher (the VAE maps it to ``IMAGE_SIDE // 4`` latents).
IMAGE_SIDE = 32
#: The world's splits are part of its definition: the teacher always trains on seed 0's split.
SPLIT_SEED = 0


def world_words() -> tuple[str, ...]:
    """Every word a world caption can contain (each becomes one token of the tiny tokenizer)."""
    words = ["on", "background", *COUNTS, *SIZES, *COLOURS, *BACKGROUNDS]
    words += [w for shape in SHAPES for w in (shape, shape + "s")]
    return tuple(dict.fromkeys(words))


@dataclass(frozen=True)
class TeacherSize:
    """Architecture of the world teacher (arguments of ``build_tiny_sd_pipeline``)."""

    vae_block_out_channels: tuple[int, ...] = (16, 32, 64)
    unet_block_out_channels: tuple[int, ...] = (48, 96, 96)
    layers_per_block: int = 1
    attention_head_dim: int = 8
    cross_attention_dim: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_intermediate_size: int = 128
    norm_num_groups: int = 16
    model_max_length: int = 16  # captions are at most 10 words (+ bos/eos)

    @property
    def latent_side(self) -> int:
        return IMAGE_SIDE // 2 ** (len(self.vae_block_out_channels) - 1)


@dataclass(frozen=True)
class TeacherPlan:
    """How long and how hard each teacher stage trains (steps *and* a time budget per stage)."""

    size: TeacherSize = field(default_factory=TeacherSize)
    pool_images: int = 20_000  # rendered training images, encoded once by the trained VAE
    vae_steps: int = 4_000
    vae_batch_size: int = 32
    vae_lr: float = 5e-3
    vae_kl_weight: float = 1e-6
    vae_seconds: float = 300.0
    vae_foreground_weight: float = 2.0
    unet_steps: int = 6_000
    unet_batch_size: int = 64
    unet_lr: float = 1e-3
    unet_seconds: float = 1_200.0
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    snr_gamma: float = 5.0
    warmup_steps: int = 100
    store_half: bool = True  # UNet and VAE weights as float16 in the saved folder


@dataclass
class StageStats:
    """What one training stage did."""

    steps: int
    seconds: float
    final_loss: float
    losses: list[float] = field(default_factory=list)  # a running mean every ~1/20 of the stage


def build_teacher_skeleton(path: str | Path, size: TeacherSize, seed: int = 0) -> Path:
    """Write the untrained world teacher (random weights, world vocabulary) to ``path``."""
    from ..testing.tiny_sd import build_tiny_sd_pipeline

    return build_tiny_sd_pipeline(
        path, prediction_type="epsilon", sample_size=size.latent_side, seed=seed,
        unet_block_out_channels=size.unet_block_out_channels,
        layers_per_block=size.layers_per_block, attention_head_dim=size.attention_head_dim,
        cross_attention_dim=size.cross_attention_dim, text_layers=size.text_layers,
        text_heads=size.text_heads, text_intermediate_size=size.text_intermediate_size,
        vae_block_out_channels=size.vae_block_out_channels, norm_num_groups=size.norm_num_groups,
        model_max_length=size.model_max_length, words=world_words())


def render_pool(count: int, side: int = IMAGE_SIDE) -> tuple[torch.Tensor, list[str]]:
    """``count`` training-split images as ``[N, 3, side, side]`` in ``[-1, 1]`` and their captions."""
    source = WorldSource("train", size=count, side=side, seed=SPLIT_SEED)
    samples = [source.load(i) for i in range(count)]
    pixels = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2)
    return pixels.float() / 127.5 - 1.0, [s.caption for s in samples]


class _Schedule:
    """Warm-up then cosine decay over whichever runs out first: steps or seconds."""

    def __init__(self, steps: int, seconds: float, warmup: int) -> None:
        self.steps, self.seconds, self.warmup = steps, seconds, warmup
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def progress(self, step: int) -> float:
        return max(step / self.steps, self.elapsed() / self.seconds if self.seconds > 0 else 1.0)

    def expected_steps(self, step: int) -> int:
        """The step count the stage will likely end at (for progress bars): the cap or the budget."""
        fraction = self.progress(step)
        return self.steps if fraction <= 0 else max(step, min(self.steps, round(step / fraction)))

    def factor(self, step: int) -> float:
        warm = min(1.0, (step + 1) / max(self.warmup, 1))
        return warm * 0.5 * (1 + math.cos(math.pi * min(self.progress(step), 1.0)))


def _set_lr(optimiser: torch.optim.Optimizer, lr: float) -> None:
    for group in optimiser.param_groups:
        group["lr"] = lr


def _record(losses: list[float], running: list[float], step: int, steps: int) -> None:
    if step % max(steps // 20, 1) == 0 and running:
        losses.append(float(np.mean(running)))
        running.clear()


def _foreground_weights(pixels: torch.Tensor, weight: float) -> torch.Tensor:
    """``1 + weight`` on pixels far from the image's border colour, 1 elsewhere: ``[B, 1, H, W]``.

    The background fills most of a world image; without this, the shape's colour (what captions
    are about) is the last thing a small VAE learns.
    """
    border = torch.cat([pixels[..., 0, :], pixels[..., -1, :], pixels[..., :, 0], pixels[..., :, -1]], dim=-1)
    background = border.median(dim=-1).values[..., None, None]
    foreground = (pixels - background).norm(dim=1, keepdim=True) > 0.25
    return 1.0 + weight * foreground.float()


def train_vae(vae: nn.Module, pixels: torch.Tensor, *, steps: int, batch_size: int, lr: float,
              kl_weight: float, seconds: float, seed: int = 0, warmup: int = 50,
              foreground_weight: float = 2.0, progress: Progress | None = None) -> StageStats:
    """Train an ``AutoencoderKL`` in place to reconstruct ``pixels`` (in ``[-1, 1]``).

    Loss: L1 + L2 of the reconstruction (shape pixels weighted ``1 + foreground_weight``) plus
    ``kl_weight`` times the KL divergence per latent element.
    """
    generator = torch.Generator().manual_seed(seed)
    vae.train().requires_grad_(True)
    optimiser = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=1e-4)
    schedule = _Schedule(steps, seconds, warmup)
    losses: list[float] = []
    running: list[float] = []
    step = 0
    while step < steps and schedule.progress(step) < 1.0:
        _set_lr(optimiser, lr * schedule.factor(step))
        batch = pixels[torch.randint(0, len(pixels), (batch_size,), generator=generator)]
        if torch.rand((), generator=generator) < 0.5:
            batch = batch.flip(-1)  # every world shape is mirror-symmetric
        posterior = vae.encode(batch).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=generator)
        reconstruction = vae.decode(posterior.mean + posterior.std * noise).sample
        error = (reconstruction - batch) * _foreground_weights(batch, foreground_weight)
        kl = posterior.kl().mean() / posterior.mean[0].numel()  # per latent element
        loss = error.abs().mean() + error.pow(2).mean() + kl_weight * kl
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimiser.step()
        step += 1
        running.append(float(loss.detach()))
        _record(losses, running, step, steps)
        if progress:
            progress(step, schedule.expected_steps(step), float(loss.detach()))
    vae.eval().requires_grad_(False)
    return StageStats(step, schedule.elapsed(), losses[-1] if losses else float(loss.detach()), losses)


@torch.no_grad()
def encode_pool(vae: nn.Module, pixels: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and standard deviations of ``pixels`` (unscaled latents)."""
    means, stds = [], []
    for start in range(0, len(pixels), batch_size):
        posterior = vae.encode(pixels[start:start + batch_size]).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


def latent_scaling_factor(means: torch.Tensor, stds: torch.Tensor, seed: int = 0) -> float:
    """``1 / std`` of sampled latents: scaled latents then have unit variance, like SD's."""
    noise = torch.randn(means.shape, generator=torch.Generator().manual_seed(seed))
    return float(1.0 / (means + stds * noise).std())


@torch.no_grad()
def encode_captions(tokenizer, text_encoder: nn.Module, captions: Sequence[str]) -> torch.Tensor:
    """Last hidden states ``[B, L, D]`` of the (frozen) text encoder, exactly as the backbone computes them."""
    ids = tokenizer(list(captions), padding="max_length", truncation=True,
                    max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    return text_encoder(ids)[0]


def _min_snr_weights(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    snr = alphas_cumprod[timesteps] / (1 - alphas_cumprod[timesteps])
    return torch.clamp(snr, max=gamma) / snr  # epsilon prediction (Hang et al. 2023)


def train_unet(unet: nn.Module, latents: tuple[torch.Tensor, torch.Tensor], caption_index: torch.Tensor,
               caption_embeds: torch.Tensor, empty_embed: torch.Tensor, noise_scheduler, *,
               steps: int, batch_size: int, lr: float, seconds: float, caption_dropout: float = 0.1,
               ema_decay: float = 0.999, snr_gamma: float = 5.0, warmup: int = 100, seed: int = 0,
               progress: Progress | None = None) -> tuple[nn.Module, StageStats]:
    """Train ``unet`` (epsilon prediction) on scaled latents; returns the EMA copy and the stats.

    ``latents`` is ``(means, stds)``, already multiplied by the VAE scaling factor; every step
    draws fresh posterior samples. Image ``i`` has caption ``caption_embeds[caption_index[i]]``,
    replaced by ``empty_embed`` with probability ``caption_dropout``.
    """
    generator = torch.Generator().manual_seed(seed)
    means, stds = latents
    alphas_cumprod = noise_scheduler.alphas_cumprod.float()
    num_train_timesteps = noise_scheduler.config.num_train_timesteps
    unet.train().requires_grad_(True)
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    optimiser = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=1e-2)
    schedule = _Schedule(steps, seconds, warmup)
    losses: list[float] = []
    running: list[float] = []
    step = 0
    while step < steps and schedule.progress(step) < 1.0:
        _set_lr(optimiser, lr * schedule.factor(step))
        index = torch.randint(0, len(means), (batch_size,), generator=generator)
        z0 = means[index] + stds[index] * torch.randn(means[index].shape, generator=generator)
        if torch.rand((), generator=generator) < 0.5:
            z0 = z0.flip(-1)
        embeds = caption_embeds[caption_index[index]]
        dropped = torch.rand(batch_size, generator=generator) < caption_dropout
        embeds = torch.where(dropped[:, None, None], empty_embed.expand_as(embeds), embeds)
        noise = torch.randn(z0.shape, generator=generator)
        timesteps = torch.randint(0, num_train_timesteps, (batch_size,), generator=generator)
        noisy = noise_scheduler.add_noise(z0, noise, timesteps)
        prediction = unet(noisy, timesteps, encoder_hidden_states=embeds, return_dict=False)[0]
        per_sample = (prediction - noise).pow(2).mean(dim=(1, 2, 3))
        loss = (per_sample * _min_snr_weights(alphas_cumprod, timesteps, snr_gamma)).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimiser.step()
        step += 1
        decay = min(ema_decay, (1 + step) / (10 + step))  # EMA warm-up, as in diffusers' EMAModel
        with torch.no_grad():
            for target, source in zip(ema.parameters(), unet.parameters()):
                target.lerp_(source, 1 - decay)
        running.append(float(per_sample.detach().mean()))
        _record(losses, running, step, steps)
        if progress:
            progress(step, schedule.expected_steps(step), float(per_sample.detach().mean()))
    unet.eval().requires_grad_(False)
    return ema, StageStats(step, schedule.elapsed(), losses[-1] if losses else float("nan"), losses)


@dataclass
class TeacherResult:
    """The saved teacher folder and what training it took."""

    path: Path
    vae: StageStats
    unet: StageStats
    scaling_factor: float
    parameters: dict[str, int]
    plan: dict

    def summary(self) -> dict:
        """JSON-ready numbers (loss curves included)."""
        return {"path": str(self.path), "scaling_factor": self.scaling_factor,
                "parameters": self.parameters, "vae": asdict(self.vae), "unet": asdict(self.unet),
                "plan": self.plan}


def _save_pipeline(path: Path, vae, text_encoder, tokenizer, unet, scheduler, half: bool) -> None:
    from diffusers import StableDiffusionPipeline

    dtype = torch.float16 if half else torch.float32
    pipe = StableDiffusionPipeline(
        vae=copy.deepcopy(vae).to(dtype), text_encoder=text_encoder, tokenizer=tokenizer,
        unet=copy.deepcopy(unet).to(dtype), scheduler=scheduler, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(path, safe_serialization=True)


def train_teacher(path: str | Path, plan: TeacherPlan = TeacherPlan(), seed: int = 0,
                  vae_progress: Progress | None = None, unet_progress: Progress | None = None,
                  untrained_path: str | Path | None = None) -> TeacherResult:
    """Build the skeleton at ``path``, train VAE and UNet, and save the teacher pipeline there.

    ``untrained_path``, if given, receives the same pipeline with the trained VAE and the
    *untrained* UNet: the baseline that shows what the UNet training bought.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    path = Path(path)
    torch.manual_seed(seed)
    build_teacher_skeleton(path, plan.size, seed=seed)
    tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder").eval().requires_grad_(False)
    vae = AutoencoderKL.from_pretrained(path / "vae")
    unet = UNet2DConditionModel.from_pretrained(path / "unet")
    scheduler = DDPMScheduler.from_pretrained(path / "scheduler")

    pixels, captions = render_pool(plan.pool_images)
    vae_stats = train_vae(vae, pixels, steps=plan.vae_steps, batch_size=plan.vae_batch_size,
                          lr=plan.vae_lr, kl_weight=plan.vae_kl_weight, seconds=plan.vae_seconds,
                          foreground_weight=plan.vae_foreground_weight,
                          seed=seed, progress=vae_progress)
    means, stds = encode_pool(vae, pixels)
    scaling = latent_scaling_factor(means, stds, seed)
    vae.register_to_config(scaling_factor=scaling)

    distinct = sorted(set(captions))
    caption_index = torch.tensor([distinct.index(c) for c in captions])
    caption_embeds = encode_captions(tokenizer, text_encoder, distinct)
    empty_embed = encode_captions(tokenizer, text_encoder, [""])
    if untrained_path is not None:
        _save_pipeline(Path(untrained_path), vae, text_encoder, tokenizer, unet, scheduler, plan.store_half)
    ema, unet_stats = train_unet(
        unet, (means * scaling, stds * scaling), caption_index, caption_embeds, empty_embed, scheduler,
        steps=plan.unet_steps, batch_size=plan.unet_batch_size, lr=plan.unet_lr,
        seconds=plan.unet_seconds, caption_dropout=plan.caption_dropout, ema_decay=plan.ema_decay,
        snr_gamma=plan.snr_gamma, warmup=plan.warmup_steps, seed=seed, progress=unet_progress)
    _save_pipeline(path, vae, text_encoder, tokenizer, ema, scheduler, plan.store_half)
    parameters = {name: sum(p.numel() for p in module.parameters())
                  for name, module in (("unet", ema), ("vae", vae), ("text_encoder", text_encoder))}
    plan_dict = asdict(plan)
    return TeacherResult(path, vae_stats, unet_stats, scaling, parameters, plan_dict)


def validation_prompts(split: str = "validation", count: int | None = None) -> list[str]:
    """The distinct captions of a split (seed 0's splits), optionally the first ``count``."""
    scenes = getattr(make_splits(SPLIT_SEED), split)
    captions = [scene.caption() for scene in scenes]
    return captions[:count] if count else captions


def judge_teacher(teacher: str | Path, prompts: Sequence[str], steps: int = 50,
                  guidance_scale: float = 7.5, seed: int = 0, batch_size: int = 32) -> dict:
    """Sample ``prompts`` with DDIM + CFG through diffusers and score them with ``world-judge``.

    Returns ``{"judge_reward", "terms": {term: mean}, "ms_per_image", "images"}``.
    """
    from ..sampling import sample_teacher
    from .judge import judge

    result = sample_teacher(teacher, list(prompts), steps=steps, guidance_scale=guidance_scale,
                            seed=seed, device="cpu", batch_size=batch_size)
    verdicts = [judge(np.asarray(image.convert("RGB")), prompt)
                for image, prompt in zip(result.images, prompts)]
    terms = {name: float(np.mean([v.terms[name] for v in verdicts])) for name in verdicts[0].terms}
    return {"judge_reward": float(np.mean([v.score for v in verdicts])), "terms": terms,
            "ms_per_image": result.ms_per_image, "images": len(verdicts)}


def judge_renders(prompts: Sequence[str], seed: int = 0) -> float:
    """Mean judge score of real renders of ``prompts`` (the ceiling a teacher can reach)."""
    from .grammar import parse_caption
    from .judge import judge
    from .render import render

    scores = [judge(render(parse_caption(p), seed + i), p).score for i, p in enumerate(prompts)]
    return float(np.mean(scores))
