"""The skipping-step DDIM solver, ``ddim``: the reference solver of LCD and RG-LCD.

On the grid ``19, 39, ..., 999`` (N=50, k=20) one step moves ``z_{t_{n+k}}`` to
``t_n = max(t_{n+k} - k, 0)`` with one (guided) teacher evaluation:

    (x0_hat, eps_hat) = denoise(z, t_{n+k})
    z_{t_n} = sqrt(abar[t_n]) x0_hat + sqrt(1 - abar[t_n]) eps_hat

``abar[t_n]`` is the reference code's ``ddim_alpha_cumprods_prev[n]`` (``abar[grid[n-1]]``, and
``abar[0]`` for ``n = 0``). In the variance-exploding coordinates ``x = z / alpha``,
``s = sigma / alpha`` this is exactly one Euler step of the probability-flow ODE ``dx/ds = eps``.

The step reads only ``alpha``/``sigma`` of the teacher's noise process, so the same code is the
Euler step of a flow teacher's ODE ``dz/ds = v``: with ``alpha = 1 - s``, ``sigma = s``,
``(1 - s_n) x0_hat + s_n eps_hat = z + (s_n - s) v`` (:mod:`rewardkit.flow_matching`).
"""

from __future__ import annotations

import torch

from .base import ConsistencySolver, Denoiser


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Solvers combine half-precision latents in float32 and cast the result back."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


class DDIMSolver(ConsistencySolver):
    """Skipping-step DDIM (first order, one teacher evaluation per step); the paper's solver."""

    name = "ddim"
    evaluations_per_step = 1

    def ddim_step(self, x0: torch.Tensor, eps: torch.Tensor, t_end: torch.Tensor,
                  like: torch.Tensor) -> torch.Tensor:
        """``alpha[t_end] x0 + sigma[t_end] eps`` (DDPM: ``sqrt(abar)``, ``sqrt(1 - abar)``) in the
        compute dtype of ``like``."""
        dtype = compute_dtype(like.dtype)
        alpha_prev, sigma_prev = self.alpha_sigma(t_end, like.to(dtype))
        return alpha_prev * x0.to(dtype) + sigma_prev * eps.to(dtype)

    def step(self, denoise: Denoiser, z: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Return ``z_{t_n}`` from ``z = z_{t_{n+k}}``: one DDIM step with the guided teacher."""
        index = torch.as_tensor(index, device=z.device).long().reshape(-1)
        x0, eps = denoise(z, self.start_timesteps(index))
        return self.ddim_step(x0, eps, self.end_timesteps(index), z).to(z.dtype)
