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

from ..sampling import sample_lcm


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


def guard_samples(backbone: Any, unet: nn.Module, prompts: Sequence[str], seeds: Sequence[int],
                  *, steps: int, guidance_scale: float, time_cond_proj_dim: int | None,
                  original_inference_steps: int = 50, timestep_scaling: float = 10.0,
                  latent_size: int | None = None) -> torch.Tensor:
    """The reward-hacking guard's fixed samples of ``unet``: every prompt at every seed,
    prompt-major, ``[P * S, 3, H, W]`` in [0, 1] (own generators, as validation grids)."""
    was_training = unet.training
    unet.eval()
    try:
        cond = backbone.encode_prompts(list(prompts))
        per_seed = [sample_lcm(backbone, unet, cond, steps=steps, seed=seed,
                               guidance_scale=guidance_scale,
                               time_cond_proj_dim=time_cond_proj_dim,
                               original_inference_steps=original_inference_steps,
                               timestep_scaling=timestep_scaling, latent_size=latent_size)
                    for seed in seeds]
    finally:
        unet.train(was_training)
    return torch.stack(per_seed, dim=1).flatten(0, 1).float().cpu()


def teacher_samples(model: str, prompts: Sequence[str], seeds: Sequence[int], *, steps: int,
                    resolution: int, guidance_scale: float = 7.5, device: Any = "cpu",
                    dtype: str = "float32") -> torch.Tensor:
    """The teacher's samples of the same (prompt, seed) grid as :func:`guard_samples`, with
    ``DDIMScheduler`` in ``steps`` steps, loaded as a user's pipeline is (``model``: a hub id or
    a pipeline folder)."""
    from ..sampling import load_pipeline, pil_to_tensor, run_pipeline

    pipe = load_pipeline(model, "ddim", device=str(device), dtype=dtype)
    result = run_pipeline(pipe, [p for p in prompts for _ in seeds], steps, guidance_scale,
                          seeds=[s for _ in prompts for s in seeds], height=resolution,
                          width=resolution)
    return pil_to_tensor(result.images)
