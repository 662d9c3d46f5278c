"""A second-order solver, ``heun``: Heun's method on the same skipping-step grid.

In the variance-exploding coordinates ``x = z / alpha_t``, ``s = sigma_t / alpha_t`` the
probability-flow ODE reads ``dx/ds = eps(z, t)``, and DDIM is exactly its Euler step. Heun adds a
corrector with a second teacher evaluation at the end point ``t_n``:

    (x0_1, eps_1) = denoise(z, t_{n+k})
    z_e   = alpha_n x0_1 + sigma_n eps_1                      (the DDIM / Euler predictor)
    (_, eps_2)    = denoise(z_e, t_n)
    x_n   = x + (s_n - s_{n+k}) (eps_1 + eps_2) / 2            (trapezoidal corrector)
          = z_e / alpha_n + (s_n - s_{n+k}) (eps_2 - eps_1) / 2

so ``z_n = z_e + (sigma_n - alpha_n s_{n+k}) (eps_2 - eps_1) / 2``. The last step evaluates the
teacher at ``t_n = 0``, a valid DDPM timestep with ``sigma_0 > 0`` for SD schedules; where a schedule
has ``sigma[t_n] = 0`` exactly (``abar = 1``) the step falls back to Euler for those samples.
Local error is third order in the step, at twice the teacher cost (``evaluations_per_step = 2``).
"""

from __future__ import annotations

import torch

from .base import Denoiser
from .ddim import DDIMSolver, compute_dtype


class HeunSolver(DDIMSolver):
    """Heun's second-order method on the PF-ODE (DDIM predictor + trapezoidal corrector)."""

    name = "heun"
    evaluations_per_step = 2

    def step(self, denoise: Denoiser, z: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Return ``z_{t_n}`` from ``z = z_{t_{n+k}}`` with two guided-teacher evaluations."""
        index = torch.as_tensor(index, device=z.device).long().reshape(-1)
        t_start, t_end = self.start_timesteps(index), self.end_timesteps(index)
        dtype = compute_dtype(z.dtype)

        x0_1, eps_1 = denoise(z, t_start)
        z_euler = self.ddim_step(x0_1, eps_1, t_end, z)
        _, eps_2 = denoise(z_euler.to(z.dtype), t_end)

        alpha, sigma = self.alpha_sigma(t_start, z_euler)
        alpha_prev, sigma_prev = self.alpha_sigma(t_end, z_euler)
        coefficient = (sigma_prev - alpha_prev * sigma / alpha) / 2
        coefficient = torch.where(sigma_prev > 0, coefficient, torch.zeros_like(coefficient))
        z_prev = z_euler + coefficient * (eps_2.to(dtype) - eps_1.to(dtype))
        return z_prev.to(z.dtype)
