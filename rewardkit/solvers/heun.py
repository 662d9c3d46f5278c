"""A second-order solver, ``heun``: Heun's method on the same skipping-step grid.

The teacher's noise process names the ODE's coordinates and its derivative
(:meth:`~rewardkit.noise_process.NoiseProcess.ode_derivative`): for a DDPM teacher the
variance-exploding ``x = z / alpha_t``, ``s = sigma_t / alpha_t`` with ``dx/ds = eps``; for a flow
teacher ``z`` itself with ``dz/ds = v = eps - x0``. DDIM is exactly the Euler step of either, and
Heun adds a corrector with a second teacher evaluation at the end point ``t_n``:

    (x0_1, eps_1) = denoise(z, t_{n+k})
    z_e   = alpha_n x0_1 + sigma_n eps_1                      (the DDIM / Euler predictor)
    (x0_2, eps_2) = denoise(z_e, t_n)
    z_n   = z_e + c (d_2 - d_1)                                (trapezoidal corrector)

with ``d_i`` the derivative at each end and ``c`` the process's
:meth:`~rewardkit.noise_process.NoiseProcess.heun_coefficient`: for DDPM
``c = (sigma_n - alpha_n s_{n+k}) / 2`` (``x_n = x + (s_n - s_{n+k})(eps_1 + eps_2) / 2`` back in
``z``), for a flow ``c = (s_n - s_{n+k}) / 2``. The last step evaluates the teacher at ``t_n = 0``,
a valid DDPM timestep with ``sigma_0 > 0`` for SD schedules; where a DDPM schedule has
``sigma[t_n] = 0`` exactly (``abar = 1``) the step falls back to Euler for those samples.
Local error is third order in the step, at twice the teacher cost (``evaluations_per_step = 2``).
"""

from __future__ import annotations

import torch

from .base import Denoiser
from .ddim import DDIMSolver


class HeunSolver(DDIMSolver):
    """Heun's second-order method on the PF-ODE (DDIM predictor + trapezoidal corrector)."""

    name = "heun"
    evaluations_per_step = 2

    def step(self, denoise: Denoiser, z: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Return ``z_{t_n}`` from ``z = z_{t_{n+k}}`` with two guided-teacher evaluations."""
        index = torch.as_tensor(index, device=z.device).long().reshape(-1)
        t_start, t_end = self.start_timesteps(index), self.end_timesteps(index)

        x0_1, eps_1 = denoise(z, t_start)
        z_euler = self.ddim_step(x0_1, eps_1, t_end, z)
        x0_2, eps_2 = denoise(z_euler.to(z.dtype), t_end)

        process = self.schedule
        coefficient = process.heun_coefficient(t_start, t_end, z_euler)
        change = (process.ode_derivative(x0_2, eps_2, z_euler)
                  - process.ode_derivative(x0_1, eps_1, z_euler))
        return (z_euler + coefficient * change).to(z.dtype)
