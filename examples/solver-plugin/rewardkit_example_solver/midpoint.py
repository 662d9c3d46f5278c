"""The explicit midpoint rule on the probability-flow ODE, as a rewardkit consistency solver.

In the variance-exploding coordinates ``x = z / alpha_t``, ``s = sigma_t / alpha_t`` the PF-ODE
reads ``dx/ds = eps(z, t)``, and one DDIM step is its Euler step. With ``h = s_n - s_{n+k}``, the
explicit midpoint rule evaluates the slope halfway and takes the whole step with it:

    (x0_1, eps_1) = denoise(z, t_{n+k})
    z_m = alpha_m x0_1 + sigma_m eps_1          (a DDIM step to t_m: the half-step predictor)
    (_, eps_2)    = denoise(z_m, t_m)
    x_n = x + h eps_2

(the half step ``x + (h/2) eps_1`` is a DDIM step because the denoiser's estimates satisfy
``z = alpha x0_1 + sigma eps_1``, as rewardkit's guided denoisers do).

The teacher only takes integer timesteps, so ``t_m`` is the integer timestep strictly between
``t_n`` and ``t_{n+k}`` whose ``s`` lies nearest the midpoint ``(s_{n+k} + s_n) / 2``; it sits at
the fraction ``c = (s_m - s_{n+k}) / h`` of the step, near 1/2. The update uses the two-stage
Runge-Kutta weights for that ``c``,

    x_n = x + h ((1 - 1/(2c)) eps_1 + 1/(2c) eps_2),  i.e.  z_n = z_e + alpha_n h / (2c) (eps_2 - eps_1)

with ``z_e`` the DDIM (Euler) step to ``t_n``: second order for any ``c`` in (0, 1], the textbook
midpoint rule at ``c = 1/2``. Where no integer lies strictly between (``k = 2``, last step) ``t_m``
is ``t_n`` and ``c = 1``: Heun's rule. Where the midpoint evaluation has ``sigma_m = 0`` (a schedule
with ``abar = 1`` there) the step falls back to Euler for those samples.
"""

from __future__ import annotations

import torch
from rewardkit.solvers import DDIMSolver, Denoiser
from rewardkit.solvers.ddim import compute_dtype


class MidpointSolver(DDIMSolver):
    """Explicit midpoint rule on the PF-ODE (second order, two teacher evaluations per step)."""

    name = "midpoint"
    evaluations_per_step = 2

    def __init__(self, alphas_cumprod: torch.Tensor, num_ddim_timesteps: int = 50) -> None:
        super().__init__(alphas_cumprod, num_ddim_timesteps)
        every = torch.arange(self.num_train_timesteps)
        alpha, sigma = self.alpha_sigma(every, self.alphas_cumprod)
        #: ``s_t = sigma_t / alpha_t`` for every training timestep: float64, shape ``[T]``.
        self.noise_levels = sigma / alpha

    def midpoint_timesteps(self, t_start: torch.Tensor, t_end: torch.Tensor) -> torch.Tensor:
        """The integer timestep in ``(t_end, t_start)`` whose ``s`` is nearest the midpoint in ``s``.

        ``t_start``, ``t_end``: integer tensors of shape ``[B]``; returns int64 ``[B]``, equal to
        ``t_end`` where no integer lies strictly between. Assumes ``abar`` strictly decreases.
        """
        levels = self.noise_levels.to(t_start.device)
        target = (levels[t_start] + levels[t_end]) / 2
        upper = torch.searchsorted(levels, target).clamp(max=self.num_train_timesteps - 1)
        lower = (upper - 1).clamp(min=0)
        nearest = torch.where((levels[upper] - target).abs() < (target - levels[lower]).abs(),
                              upper, lower)
        # clamp(min, max) with min > max gives max: t_start - 1 = t_end when they are adjacent
        return nearest.clamp(min=t_end + 1, max=t_start - 1)

    def correction(self, t_start: torch.Tensor, t_mid: torch.Tensor, t_end: torch.Tensor,
                   like: torch.Tensor) -> torch.Tensor:
        """``alpha_n h / (2c)``, computed in float64 and broadcast to ``like`` (in its dtype).

        Zero where ``sigma_m = 0``, which turns the step into Euler for those samples.
        """
        s_start, s_mid, s_end = (self.noise_levels.to(like.device)[t] for t in (t_start, t_mid, t_end))
        alpha_end, _ = self.alpha_sigma(t_end, s_end)
        coefficient = alpha_end * (s_end - s_start) ** 2 / (2 * (s_mid - s_start))
        coefficient = torch.where(s_mid > 0, coefficient, torch.zeros_like(coefficient))
        return coefficient.to(like.dtype).view((-1,) + (1,) * (like.ndim - 1))

    def step(self, denoise: Denoiser, z: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Return ``z_{t_n}`` from ``z = z_{t_{n+k}}`` with two guided-teacher evaluations."""
        index = torch.as_tensor(index, device=z.device).long().reshape(-1)
        t_start, t_end = self.start_timesteps(index), self.end_timesteps(index)
        t_mid = self.midpoint_timesteps(t_start, t_end)
        dtype = compute_dtype(z.dtype)

        x0_1, eps_1 = denoise(z, t_start)
        z_mid = self.ddim_step(x0_1, eps_1, t_mid, z)
        _, eps_2 = denoise(z_mid.to(z.dtype), t_mid)

        z_euler = self.ddim_step(x0_1, eps_1, t_end, z)
        coefficient = self.correction(t_start, t_mid, t_end, z_euler)
        z_prev = z_euler + coefficient * (eps_2.to(dtype) - eps_1.to(dtype))
        return z_prev.to(z.dtype)
