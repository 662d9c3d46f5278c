"""Sampling the world's flow teacher and its students in process, timed, for the flow world's
quality check and benchmark.

The flow teacher has no T5 and is trained with one zero T5 token
(:data:`rewardkit.world.flow_teacher.MAX_SEQUENCE_LENGTH`); diffusers' pipeline call would feed
its default 256, so the flow world samples through the ``stable-diffusion-3`` backbone instead:

- the teacher with its ``FlowMatchEulerDiscreteScheduler`` and classifier-free guidance against
  the empty prompt (:func:`rewardkit.proxies.preference_set.teacher_ddim_latents`, the sampler of
  the LRM's preference sets);
- a student with its own chain (:func:`rewardkit.sampling.sample_lcm_latents`: the Euler chain
  its saved pipeline runs, no guidance: it is baked in).

Image ``i`` of a batch starting at prompt ``k`` is drawn from a generator seeded ``seed + k``, so
every model sees the same prompts with the same seeds.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .flow_teacher import BACKBONE_PARAMS


def flow_backbone(teacher: str | Path) -> Any:
    """The ``stable-diffusion-3`` backbone of a world flow teacher folder (fp32, CPU)."""
    from ..backbones.stable_diffusion_3 import StableDiffusion3Backbone

    return StableDiffusion3Backbone(str(teacher), **BACKBONE_PARAMS)


@torch.no_grad()
def teacher_images(backbone: Any, prompts: Sequence[str], *, steps: int = 50,
                   guidance_scale: float = 7.5, seed: int = 0,
                   batch_size: int = 32) -> tuple[torch.Tensor, float]:
    """Images in ``[0, 1]`` of the teacher (Euler, CFG) and the seconds sampling took."""
    from ..proxies.preference_set import teacher_ddim_latents

    images, seconds = [], 0.0
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start:start + batch_size])
        cond = backbone.encode_prompts(chunk).float()
        uncond = backbone.empty_conditioning(len(chunk)).float()
        began = time.perf_counter()
        latents = teacher_ddim_latents(backbone, cond, uncond, steps, guidance_scale,
                                       torch.Generator().manual_seed(seed + start))
        images.append(backbone.decode_latents(latents).float().cpu())
        seconds += time.perf_counter() - began
    return torch.cat(images), seconds


@torch.no_grad()
def student_images(backbone: Any, student: torch.nn.Module, prompts: Sequence[str], *,
                   steps: int, seed: int = 0, batch_size: int = 32) -> tuple[torch.Tensor, float]:
    """Images in ``[0, 1]`` of a flow student's ``steps``-step chain and the seconds it took."""
    from ..sampling import sample_lcm_latents

    images, seconds = [], 0.0
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start:start + batch_size])
        cond = backbone.encode_prompts(chunk).float()
        began = time.perf_counter()
        latents = sample_lcm_latents(backbone, student, cond, steps=steps, seed=seed + start,
                                     guidance_scale=1.0, time_cond_proj_dim=None)
        images.append(backbone.decode_latents(latents).float().cpu())
        seconds += time.perf_counter() - began
    return torch.cat(images), seconds


def judge_reward(images: torch.Tensor, prompts: Sequence[str]) -> float:
    """Mean ``world-judge`` score of ``[N, 3, H, W]`` images in ``[0, 1]``."""
    from .judge import judge

    pixels = images.float().clamp(0, 1).numpy()
    return float(np.mean([judge(image, prompt).score for image, prompt in zip(pixels, prompts)]))


__all__ = ["flow_backbone", "judge_reward", "student_images", "teacher_images"]
