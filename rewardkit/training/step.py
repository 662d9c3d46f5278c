"""One latent consistency distillation (LCD) step, written to read like the paper.

::

    n ~ U{0..N-1},  w ~ U[w_min, w_max]           t_{n+k} = grid[n+1],  t_n = grid[n]
    z_{t_{n+k}} = alpha z0 + sigma eps
    f_theta  = c_skip z_{t_{n+k}} + c_out x0_theta(z_{t_{n+k}}, w, c)          (student, with grad)
    z_{t_n}  = solver step of the teacher, ONE batched call on [c; empty]      (no grad)
    f_theta- = c_skip z_{t_n} + c_out x0_theta-(z_{t_n}, w, c)                 (EMA target, no grad)
    L_LCD    = d(f_theta, f_theta-)                                            (pseudo-Huber or L2)

:func:`lcd_forward` computes all of it and returns a :class:`StepOutputs`; the recipe adds the
extension losses, runs backward, steps the optimiser and updates the EMA target.

The teacher's noise process (``backbone.schedule``, a
:class:`~rewardkit.noise_process.NoiseProcess`) supplies ``alpha``, ``sigma``, ``x0_theta`` from
the raw output, the grid and the consistency function: for a DDPM teacher ``grid[n] =
max(grid[n+1] - k, 0)`` and LCM's ``c_skip``/``c_out``; for a flow teacher
(:mod:`rewardkit.flow_matching`) ``alpha = 1 - s``, ``sigma = s``, ``x0_theta = z - s v_theta``
and ``f = x0_theta`` (``c_skip = 0``, ``c_out = 1``: ``f(z, 0) = z`` already).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..backbones.conditioning import Conditioning
from ..consistency import consistency_distance, guidance_scale_embedding
from ..solvers.guidance import teacher_denoiser


@dataclass
class StepOutputs:
    """What one LCD step computed; handed to the recipe's extension points.

    ``student_x0`` is ``f_theta`` at ``t_{n+k}`` *with* its graph (the same tensor the LCD loss
    uses, so a reward on it back-propagates into the student); ``target_x0`` is ``f_theta-`` at
    ``t_n`` (no grad). ``latents`` are the scaled clean latents ``z0``.
    """

    student_x0: torch.Tensor
    target_x0: torch.Tensor
    latents: torch.Tensor
    #: The prompts' conditioning (the backbone's :class:`~rewardkit.backbones.Conditioning`).
    cond: Conditioning
    captions: list[str]
    w: torch.Tensor
    timesteps: torch.Tensor
    lcd_loss: torch.Tensor
    #: Optimiser steps completed before this step (0 for the first step).
    global_step: int = 0
    #: ``t_n``, where the target was evaluated.
    target_timesteps: torch.Tensor | None = None
    #: Anything an extension wants to pass from ``extra_losses`` to ``after_optimizer_step``.
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class LCDHyper:
    """The numbers one LCD step needs: a view of the recipe config, built in one place
    (``LCDRecipe.hyper``) so :func:`lcd_forward` needs no config object."""

    w_min: float = 5.0
    w_max: float = 15.0
    time_cond_proj_dim: int | None = 256
    loss_type: str = "huber"
    huber_c: float = 0.001
    timestep_scaling: float = 10.0
    sigma_data: float = 0.5
    batched_teacher: bool = True


def sample_guidance_scale(batch: int, w_min: float, w_max: float,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """``w ~ U[w_min, w_max]``, one per sample (float32, on the CPU generator's device)."""
    return (w_max - w_min) * torch.rand(batch, generator=generator) + w_min


def lcd_forward(
    *,
    backbone: Any,
    solver: Any,
    student: nn.Module,
    target: nn.Module,
    latents: torch.Tensor,
    cond: Conditioning,
    uncond: Conditioning,
    captions: list[str],
    hyper: LCDHyper,
    generator: torch.Generator,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    global_step: int = 0,
) -> StepOutputs:
    """One LCD forward pass: the student's and target's consistency outputs and ``L_LCD``.

    Randomness (``n``, ``w``, ``eps``) is drawn from ``generator`` (a CPU generator the recipe
    checkpoints), so a resumed run draws exactly what an uninterrupted one would.
    """
    device, batch = latents.device, latents.shape[0]
    schedule = backbone.schedule

    # n ~ U{0..N-1}, w ~ U[w_min, w_max], eps ~ N(0, I)
    index = solver.sample_indices(batch, generator=generator).to(device)
    w = sample_guidance_scale(batch, hyper.w_min, hyper.w_max, generator).to(device)
    noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype).to(device)
    t_start, t_end = solver.start_timesteps(index), solver.end_timesteps(index)

    # z_{t_{n+k}} = alpha z0 + sigma eps
    noisy = schedule.add_noise(latents, noise, t_start)

    w_embedding = None
    if hyper.time_cond_proj_dim:
        w_embedding = guidance_scale_embedding(w, hyper.time_cond_proj_dim).to(device)

    # student: f_theta(z_{t_{n+k}}, w, c), with grad
    with autocast():
        student_out = backbone.predict(student, noisy, t_start, cond, w_embedding)
    student_x0 = schedule.consistency_output(
        noisy, schedule.predicted_origin(student_out.float(), t_start, noisy),
        t_start, hyper.sigma_data, hyper.timestep_scaling)

    with torch.no_grad():
        # teacher: one batched call on [c; empty], guided inside the solver
        teacher = backbone.unet
        teacher_dtype = next(teacher.parameters()).dtype

        def unet_fn(z: torch.Tensor, t: torch.Tensor, c: Conditioning) -> torch.Tensor:
            with autocast():
                out = backbone.predict(teacher, z.to(teacher_dtype), t, c.to(dtype=teacher_dtype))
            return out.float()

        denoise = teacher_denoiser(unet_fn, cond, uncond, schedule, w,
                                   batched=hyper.batched_teacher)
        z_prev = solver.step(denoise, noisy, index).to(latents.dtype)

        # target: f_theta-(z_{t_n}, w, c), the EMA copy
        with autocast():
            target_out = backbone.predict(target, z_prev, t_end, cond, w_embedding)
        target_x0 = schedule.consistency_output(
            z_prev, schedule.predicted_origin(target_out.float(), t_end, z_prev),
            t_end, hyper.sigma_data, hyper.timestep_scaling)

    lcd_loss = consistency_distance(student_x0, target_x0, hyper.loss_type, hyper.huber_c)
    return StepOutputs(student_x0=student_x0, target_x0=target_x0, latents=latents,
                       cond=cond, captions=list(captions), w=w,
                       timesteps=t_start, lcd_loss=lcd_loss, global_step=global_step,
                       target_timesteps=t_end)
