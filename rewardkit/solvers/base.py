"""The consistency-solver contract: the teacher's ODE step on the skipping-step grid.

The grid comes from the teacher's noise process
(:meth:`~rewardkit.noise_process.NoiseProcess.skipping_grid`): ``N = num_ddim_timesteps`` start
points over ``T`` training timesteps, ``k = T // N`` apart. For a DDPM teacher they are ``t = k, 2k, ..., T`` minus one (``19, 39, ..., 999`` for N=50,
T=1000); for a flow teacher the same indices on its shifted noise levels. A training step draws an
index ``n`` per sample, starts at ``t_{n+k} = grid[n]`` and the solver moves the noisy latent to
the grid point below, ``t_n`` (``max(t_{n+k} - k, 0)`` for DDPM; the clean end for ``n = 0``),
using the (guided) teacher. Solvers reach the process only through ``self.schedule``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, ClassVar

import torch

from ..noise_process import NoiseProcess
from ..schedule import NoiseSchedule

Denoiser = Callable[[torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]
"""``denoise(z_t, t) -> (x0_hat, eps_hat)``: the teacher with classifier-free guidance applied."""


class ConsistencySolver(ABC):
    """Moves ``z_{t_{n+k}}`` to ``z_{t_n}`` with the teacher. Subclasses implement :meth:`step`."""

    name: ClassVar[str] = "solver"
    #: Teacher evaluations one :meth:`step` makes (for cost accounting).
    evaluations_per_step: ClassVar[int] = 1

    def __init__(self, alphas_cumprod: torch.Tensor | NoiseProcess,
                 num_ddim_timesteps: int = 50) -> None:
        """``alphas_cumprod``: the teacher's noise process (what recipes pass: the backbone's
        ``schedule``, a :class:`~rewardkit.schedule.NoiseSchedule` or a
        :class:`~rewardkit.flow_matching.FlowMatchProcess`) or a DDPM ``abar`` tensor ``[T]``."""
        from ..errors import ConfigError

        self.schedule = (alphas_cumprod if isinstance(alphas_cumprod, NoiseProcess)
                         else NoiseSchedule(alphas_cumprod))
        total = self.schedule.num_train_timesteps
        if not 1 <= num_ddim_timesteps <= total:
            raise ConfigError(
                f"num_ddim_timesteps must be between 1 and {total}, got {num_ddim_timesteps}")
        #: ``abar`` in float64, ``[T]`` (a DDPM schedule's; ``None`` for a flow process).
        self.alphas_cumprod = getattr(self.schedule, "alphas_cumprod", None)
        self.num_train_timesteps = total
        self.num_ddim_timesteps = num_ddim_timesteps
        self.skip = total // num_ddim_timesteps
        #: ``[t_0, t_1, ..., t_N]``: the process's grid with its clean end ``t_0`` first.
        self.grid = self.schedule.skipping_grid(num_ddim_timesteps)
        #: The start points ``t_{n+k}`` (``grid[1:]``).
        self.timesteps = self.grid[1:]

    def sample_indices(self, batch: int, generator: torch.Generator | None = None,
                       device: torch.device | str = "cpu") -> torch.Tensor:
        """Uniform grid indices ``n`` in ``[0, N)``, one per sample."""
        return torch.randint(0, self.num_ddim_timesteps, (batch,), generator=generator).to(device)

    def _grid_on(self, device: torch.device) -> torch.Tensor:
        """The full grid ``[t_0, ..., t_N]`` on ``device`` (copied there once)."""
        cache = self.__dict__.setdefault("_grid_on_device", {})
        grid = cache.get(device)
        if grid is None:
            grid = cache[device] = self.grid.to(device)
        return grid

    def start_timesteps(self, index: torch.Tensor) -> torch.Tensor:
        """``t_{n+k}`` for grid indices ``index`` (the grid is copied to a device once)."""
        return self._grid_on(index.device)[index + 1]

    def end_timesteps(self, index: torch.Tensor) -> torch.Tensor:
        """``t_n``: the grid point below the start (``max(t_{n+k} - k, 0)`` for DDPM)."""
        return self._grid_on(index.device)[index]

    def check_fits(self, alphas_cumprod: torch.Tensor | NoiseProcess,
                   num_ddim_timesteps: int) -> None:
        """Refuse a built solver made for another grid size or noise process than a run's
        (``alphas_cumprod``: the teacher's process, ``backbone.schedule``, or a DDPM ``abar``)."""
        from ..errors import ConfigError

        if self.num_ddim_timesteps != num_ddim_timesteps:
            raise ConfigError(f"solver: the built solver has num_ddim_timesteps "
                              f"{self.num_ddim_timesteps}, the config {num_ddim_timesteps}; "
                              "build it with the same value or set num_ddim_timesteps")
        teacher = (alphas_cumprod if isinstance(alphas_cumprod, NoiseProcess)
                   else NoiseSchedule(alphas_cumprod))
        if not self.schedule.matches(teacher):
            raise ConfigError(f"solver: the built solver's {self.schedule!r} is not the "
                              f"teacher's noise schedule ({teacher!r}); build it with "
                              "alphas_cumprod=backbone.schedule")

    def alpha_sigma(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``alpha_t`` and ``sigma_t`` broadcast to ``like`` (the process's: ``sqrt(abar_t)``,
        ``sqrt(1 - abar_t)`` for DDPM, ``1 - s``, ``s`` for a flow), in ``like``'s compute dtype."""
        return self.schedule.alpha_sigma(t, like)

    @abstractmethod
    def step(self, denoise: Denoiser, z: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Return the estimate of ``z_{t_n}`` from ``z = z_{t_{n+k}}`` (no gradients needed)."""
