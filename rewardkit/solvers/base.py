"""The consistency-solver contract: the teacher's ODE step on the skipping-step grid.

The grid has ``N = num_ddim_timesteps`` points over ``T`` training timesteps, ``k = T // N``
apart: ``t = k, 2k, ..., T`` minus one (``19, 39, ..., 999`` for N=50, T=1000). A training
step draws an index ``n`` per sample, starts at ``t_{n+k} = grid[n]`` and the solver moves the
noisy latent to ``t_n = max(t_{n+k} - k, 0)`` using the (guided) teacher.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, ClassVar

import torch

from ..schedule import NoiseSchedule

Denoiser = Callable[[torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]
"""``denoise(z_t, t) -> (x0_hat, eps_hat)``: the teacher with classifier-free guidance applied."""


class ConsistencySolver(ABC):
    """Moves ``z_{t_{n+k}}`` to ``z_{t_n}`` with the teacher. Subclasses implement :meth:`step`."""

    name: ClassVar[str] = "solver"
    #: Teacher evaluations one :meth:`step` makes (for cost accounting).
    evaluations_per_step: ClassVar[int] = 1

    def __init__(self, alphas_cumprod: torch.Tensor | NoiseSchedule,
                 num_ddim_timesteps: int = 50) -> None:
        """``alphas_cumprod``: the teacher's :class:`~rewardkit.schedule.NoiseSchedule` (what
        recipes pass: the backbone's, cached on the device) or its ``abar`` tensor ``[T]``."""
        from ..errors import ConfigError

        self.schedule = (alphas_cumprod if isinstance(alphas_cumprod, NoiseSchedule)
                         else NoiseSchedule(alphas_cumprod))
        total = self.schedule.num_train_timesteps
        if not 1 <= num_ddim_timesteps <= total:
            raise ConfigError(
                f"num_ddim_timesteps must be between 1 and {total}, got {num_ddim_timesteps}")
        #: ``abar`` in float64, ``[T]`` (the schedule's).
        self.alphas_cumprod = self.schedule.alphas_cumprod
        self.num_train_timesteps = total
        self.num_ddim_timesteps = num_ddim_timesteps
        self.skip = total // num_ddim_timesteps
        self.timesteps = (torch.arange(1, num_ddim_timesteps + 1) * self.skip).round().long() - 1

    def sample_indices(self, batch: int, generator: torch.Generator | None = None,
                       device: torch.device | str = "cpu") -> torch.Tensor:
        """Uniform grid indices ``n`` in ``[0, N)``, one per sample."""
        return torch.randint(0, self.num_ddim_timesteps, (batch,), generator=generator).to(device)

    def start_timesteps(self, index: torch.Tensor) -> torch.Tensor:
        """``t_{n+k}`` for grid indices ``index`` (the grid is copied to a device once)."""
        cache = self.__dict__.setdefault("_grid_on_device", {})
        grid = cache.get(index.device)
        if grid is None or grid.shape != self.timesteps.shape:
            grid = cache[index.device] = self.timesteps.to(index.device)
        return grid[index]

    def end_timesteps(self, index: torch.Tensor) -> torch.Tensor:
        """``t_n = max(t_{n+k} - k, 0)``."""
        return (self.start_timesteps(index) - self.skip).clamp(min=0)

    def check_fits(self, alphas_cumprod: torch.Tensor, num_ddim_timesteps: int) -> None:
        """Refuse a built solver made for another grid size or noise schedule than a run's."""
        from ..errors import ConfigError

        if self.num_ddim_timesteps != num_ddim_timesteps:
            raise ConfigError(f"solver: the built solver has num_ddim_timesteps "
                              f"{self.num_ddim_timesteps}, the config {num_ddim_timesteps}; "
                              "build it with the same value or set num_ddim_timesteps")
        teacher = alphas_cumprod.detach().double().cpu()
        own = torch.as_tensor(self.alphas_cumprod).detach().double().cpu()
        if own.shape != teacher.shape or not torch.allclose(own, teacher, atol=1e-6):
            raise ConfigError("solver: the built solver's alphas_cumprod is not the teacher's "
                              "noise schedule; build it with alphas_cumprod=backbone.alphas_cumprod")

    def alpha_sigma(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``sqrt(abar_t)`` and ``sqrt(1 - abar_t)`` broadcast to ``like`` (the schedule's:
        square roots in float64, then rounded to ``like``'s compute dtype)."""
        return self.schedule.alpha_sigma(t, like)

    @abstractmethod
    def step(self, denoise: Denoiser, z: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Return the estimate of ``z_{t_n}`` from ``z = z_{t_{n+k}}`` (no gradients needed)."""
