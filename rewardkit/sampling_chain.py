"""One few-step sampling chain for every student scheduler.

A student samples with the scheduler its backbone names (``backbone.lcm_scheduler()``):
``LCMScheduler`` for DDPM teachers, ``FlowMatchEulerDiscreteScheduler`` for flow teachers. The
two differ in what diffusers' ``set_timesteps`` takes, whether latents are scaled by an
``init_noise_sigma`` and whether ``step`` returns the x0 prediction; these three helpers hide
that, so :func:`rewardkit.sampling.sample_lcm_latents` and
:func:`rewardkit.sampling_grad.sample_consistency` run one loop, the one a diffusers pipeline runs
with that scheduler.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch


def set_chain_timesteps(scheduler: Any, steps: int, device: torch.device | str,
                        original_inference_steps: int) -> None:
    """``scheduler.set_timesteps(steps)`` as the student's pipeline calls it (with
    ``original_inference_steps`` for a scheduler that takes it, as ``LCMScheduler`` does)."""
    takes = inspect.signature(scheduler.set_timesteps).parameters
    if "original_inference_steps" in takes:
        scheduler.set_timesteps(steps, device=device,
                                original_inference_steps=original_inference_steps)
    else:
        scheduler.set_timesteps(steps, device=device)


def initial_noise_sigma(scheduler: Any) -> float:
    """What the initial Gaussian noise is multiplied by (``init_noise_sigma``; 1 for flow
    schedulers, which have none)."""
    return getattr(scheduler, "init_noise_sigma", 1.0)


def chain_step(scheduler: Any, process: Any, model_output: torch.Tensor, t: torch.Tensor,
               latents: torch.Tensor, generator: torch.Generator | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """One scheduler step: ``(next latents, x0 prediction)``.

    ``LCMScheduler`` returns both (re-noising with ``generator``); a flow scheduler returns the
    next latents only, and the x0 prediction is then the noise process's
    ``predicted_origin`` (``z - s v``, what the flow scheduler's step is built on).
    """
    result = scheduler.step(model_output, t, latents, generator=generator, return_dict=False)
    if len(result) > 1:
        return result[0], result[1]
    return result[0], process.predicted_origin(model_output, t, latents)


__all__ = ["set_chain_timesteps", "initial_noise_sigma", "chain_step"]
