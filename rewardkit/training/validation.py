"""Validation grids: fixed prompts and seeds sampled from the current student with ``LCMScheduler``.

One row per (prompt, seed), one column per step count (1, 2 and 4 by default), saved as
``output_dir/validation/step-{step}.png``. Sampling uses its own generators, so validation never
changes the training run's random stream (resumed and uninterrupted runs stay identical).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..backbones.conditioning import Conditioning
from ..consistency import guidance_scale_embedding


def latent_shape(backbone: Any, latent_size: int | Sequence[int] | None = None) -> tuple[int, int]:
    """``(h, w)`` of latents to sample: ``latent_size`` (one side, or ``(h, w)``), else the
    teacher's native ``backbone.sample_size``. Callers that sample for a run pass the training
    latents' size: a model trained at another resolution than the teacher's native one must be
    sampled (and its samples compared with ground truths) at that resolution."""
    if latent_size is None:
        return int(backbone.sample_size), int(backbone.sample_size)
    if isinstance(latent_size, int):
        return latent_size, latent_size
    height, width = (int(side) for side in latent_size)
    return height, width


@torch.no_grad()
def sample_lcm(backbone: Any, unet: nn.Module, cond: Conditioning, *, steps: int,
               seed: int, guidance_scale: float, time_cond_proj_dim: int | None,
               original_inference_steps: int = 50, timestep_scaling: float = 10.0,
               latent_size: int | Sequence[int] | None = None) -> torch.Tensor:
    """Images in ``[0, 1]`` from ``unet`` with an ``LCMScheduler`` of ``steps`` steps.

    ``cond``: the prompts' conditioning (``backbone.encode_prompts``). The guidance embedding is
    of ``w = guidance_scale - 1``, as diffusers' pipelines do. ``latent_size``: see
    :func:`latent_shape` (default: the teacher's native size).
    """
    denoised = sample_lcm_latents(
        backbone, unet, cond, steps=steps, seed=seed, guidance_scale=guidance_scale,
        time_cond_proj_dim=time_cond_proj_dim, original_inference_steps=original_inference_steps,
        timestep_scaling=timestep_scaling, latent_size=latent_size)
    return backbone.decode_latents(denoised).float().cpu()


@torch.no_grad()
def sample_lcm_latents(backbone: Any, unet: nn.Module, cond: Conditioning, *, steps: int,
                       seed: int, guidance_scale: float, time_cond_proj_dim: int | None,
                       original_inference_steps: int = 50, timestep_scaling: float = 10.0,
                       latent_size: int | Sequence[int] | None = None) -> torch.Tensor:
    """The scaled latents :func:`sample_lcm` decodes (in ``unet``'s dtype, on its device)."""
    scheduler = backbone.lcm_scheduler(original_inference_steps, timestep_scaling)
    device = cond.prompt_embeds.device
    scheduler.set_timesteps(steps, device=device, original_inference_steps=original_inference_steps)
    batch = len(cond)
    height, width = latent_shape(backbone, latent_size)
    generator = torch.Generator().manual_seed(seed)
    dtype = next(unet.parameters()).dtype
    latents = torch.randn((batch, backbone.latent_channels, height, width), generator=generator)
    latents = (latents * scheduler.init_noise_sigma).to(device=device, dtype=dtype)
    w_embedding = None
    if time_cond_proj_dim:
        w = torch.full((batch,), guidance_scale - 1.0)
        w_embedding = guidance_scale_embedding(w, time_cond_proj_dim).to(device=device, dtype=dtype)
    denoised = latents
    for t in scheduler.timesteps:
        out = backbone.predict(unet, latents, t.expand(batch).to(device), cond.to(dtype=dtype),
                               w_embedding)
        # LCMScheduler re-noises with torch.randn(generator=...) on the generator's device
        latents, denoised = scheduler.step(out, t, latents, generator=generator, return_dict=False)
        latents = latents.to(dtype)
    return denoised.to(dtype)


def image_grid(rows: Sequence[Sequence[torch.Tensor]]) -> Any:
    """A PIL image of ``rows`` of ``[3, H, W]`` tensors in ``[0, 1]`` (1 px gap)."""
    from PIL import Image

    height, width = rows[0][0].shape[-2:]
    grid = Image.new("RGB", (len(rows[0]) * (width + 1) - 1, len(rows) * (height + 1) - 1), "white")
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            array = (image.clamp(0, 1).permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
            grid.paste(Image.fromarray(array), (c * (width + 1), r * (height + 1)))
    return grid


def validation_grid(backbone: Any, unet: nn.Module, prompts: Sequence[str], seeds: Sequence[int],
                    steps: Sequence[int], path: str | Path, *, guidance_scale: float,
                    time_cond_proj_dim: int | None, original_inference_steps: int = 50,
                    timestep_scaling: float = 10.0) -> Path:
    """Sample every (prompt, seed) at every step count and save the grid as a PNG."""
    was_training = unet.training
    unet.eval()
    try:
        cond = backbone.encode_prompts(list(prompts))
        columns = []
        for n_steps in steps:
            per_seed = [sample_lcm(backbone, unet, cond, steps=n_steps, seed=seed,
                                   guidance_scale=guidance_scale,
                                   time_cond_proj_dim=time_cond_proj_dim,
                                   original_inference_steps=original_inference_steps,
                                   timestep_scaling=timestep_scaling) for seed in seeds]
            columns.append([img for images in per_seed for img in images])  # seed-major rows
    finally:
        unet.train(was_training)
    rows = [list(cells) for cells in zip(*columns)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(rows).save(path)
    return path
