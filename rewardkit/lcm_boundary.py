"""The LCM consistency function of a variance-preserving teacher and its boundary scalings.

``f(z, t) = c_skip(t) z + c_out(t) x0_hat`` with the scalings of latent consistency models
(Luo et al. 2023; diffusers' ``LCMScheduler``), on integer DDPM timesteps. The VP noise process
(:class:`rewardkit.schedule.NoiseSchedule`) uses it as its ``consistency_output``; both functions
are re-exported from :mod:`rewardkit.consistency`.
"""

from __future__ import annotations

import torch

from .noise_process import _compute_dtype, _per_sample


def scalings_for_boundary_conditions(timesteps: torch.Tensor | int, sigma_data: float = 0.5,
                                     timestep_scaling: float = 10.0
                                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``c_skip(t)`` and ``c_out(t)`` of the consistency function.

    ``c_skip = sigma_d^2 / ((s t)^2 + sigma_d^2)`` and ``c_out = s t / sqrt((s t)^2 + sigma_d^2)``
    with ``s = timestep_scaling`` and ``t`` the integer DDPM timestep, so ``c_skip(0) = 1`` and
    ``c_out(0) = 0`` exactly: the boundary condition ``f(z, 0) = z``. Returned in
    float32 with the shape of ``timesteps``.
    """
    t = torch.as_tensor(timesteps).to(torch.float32)
    scaled = timestep_scaling * t
    denominator = scaled ** 2 + sigma_data ** 2
    c_skip = sigma_data ** 2 / denominator
    c_out = scaled / denominator.sqrt()
    return c_skip, c_out


def consistency_output(sample: torch.Tensor, x0_pred: torch.Tensor,
                       timesteps: torch.Tensor | int, sigma_data: float = 0.5,
                       timestep_scaling: float = 10.0) -> torch.Tensor:
    """The consistency function ``f(z, t) = c_skip(t) z + c_out(t) x0_hat``.

    Used for the student at ``t_{n+k}`` (with grad) and for the EMA target at ``t_n``; at
    ``t = 0`` it returns ``sample`` exactly. Keeps the gradient of ``x0_pred``.
    """
    t = torch.as_tensor(timesteps, device=sample.device)
    if t.ndim == 0:
        t = t.expand(sample.shape[0])
    c_skip, c_out = scalings_for_boundary_conditions(t, sigma_data, timestep_scaling)
    dtype = _compute_dtype(sample.dtype)
    c_skip = _per_sample(c_skip.to(dtype), sample)
    c_out = _per_sample(c_out.to(dtype), sample)
    out = c_skip * sample.to(dtype) + c_out * x0_pred.to(dtype)
    return out.to(sample.dtype)


def lcm_scheduler_denoised(alphas_cumprod: torch.Tensor, prediction_type: str,
                           model_output: torch.Tensor, timestep: torch.Tensor, sample: torch.Tensor,
                           timestep_scaling: float = 10.0,
                           clip_range: float | None = None) -> torch.Tensor:
    """``LCMScheduler.step``'s ``denoised`` at one (0-d integer) ``timestep``, with its float32
    arithmetic (``alphas_cumprod`` in float32 as the scheduler holds it), so a sampler built on
    it matches the scheduler bit for bit; keeps the gradient of ``model_output``."""
    abar = alphas_cumprod[int(timestep)].to(sample.device)
    if prediction_type == "epsilon":
        x0 = (sample - (1 - abar).sqrt() * model_output) / abar.sqrt()
    elif prediction_type == "v_prediction":
        x0 = abar.sqrt() * sample - (1 - abar).sqrt() * model_output
    else:
        x0 = model_output
    if clip_range is not None:
        x0 = x0.clamp(-clip_range, clip_range)
    # the scheduler's own scalings: t * scaling with the 0-d integer timestep, ** 0.5
    scaled = torch.as_tensor(timestep).cpu() * timestep_scaling
    c_skip = 0.5 ** 2 / (scaled ** 2 + 0.5 ** 2)
    c_out = scaled / (scaled ** 2 + 0.5 ** 2) ** 0.5
    return c_out.to(sample.device) * x0 + c_skip.to(sample.device) * sample


__all__ = ["scalings_for_boundary_conditions", "consistency_output", "lcm_scheduler_denoised"]
