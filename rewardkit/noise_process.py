"""The noise-process interface: what the training step, the solvers and the guided denoiser ask
of a teacher's forward process, so one step serves DDPM UNets and flow-matching transformers.

Every process rewardkit knows writes its noisy latent as

    z_t = alpha_t x0 + sigma_t eps

- variance preserving (SD 1.x/2.x, SDXL; :class:`rewardkit.schedule.NoiseSchedule`):
  ``alpha_t = sqrt(abar_t)``, ``sigma_t = sqrt(1 - abar_t)``, integer DDPM timesteps;
- rectified flow (SD 3 / 3.5; :class:`rewardkit.flow_matching.FlowMatchProcess`):
  ``alpha = 1 - s``, ``sigma = s``, ``t = T s`` (what the transformer is fed).

The backbone owns its process (``backbone.schedule``); :func:`rewardkit.training.step.lcd_forward`
and the solvers call only the methods below and never ask which family a teacher is. What a
process defines:

==========================  ================================================================
``alpha_sigma(t, like)``    ``alpha_t``, ``sigma_t``: the noising coefficients
``add_noise(x0, eps, t)``   ``z_t = alpha_t x0 + sigma_t eps``
``predicted_origin``        ``x0_hat`` from the network's raw output
``predicted_noise``         ``eps_hat`` from the network's raw output
``skipping_grid(N)``        the teacher-solver grid ``t_0 < t_1 < ... < t_N`` (``t_0``: clean end)
``consistency_output``      the consistency function ``f(z, t)`` built on ``x0_hat``
``ode_derivative``          ``dx/ds`` of the probability-flow ODE in the process's coordinates
``heun_coefficient``        the trapezoidal corrector's factor in those coordinates
``sampler_denoised``        the stochastic few-step sampler's ``d = f(z, t)``
``renoise_coefficients``    ``alpha_t``, ``sigma_t`` of its re-noising ``alpha d + sigma eps``
==========================  ================================================================

The teacher's Euler step needs nothing more: with a constant ``(x0_hat, eps_hat)`` the ODE's
solution from ``t`` to ``t'`` is ``alpha_t' x0_hat + sigma_t' eps_hat`` for both processes (DDIM
for VP, exactly ``z + (s' - s) v`` for a flow), which is what the ``ddim`` solver computes.

The last two serve the stochastic multistep consistency sampler that ``grpo`` optimises as a
policy (:mod:`rewardkit.consistency_policy`): each step forms ``d = f(z, t)`` and re-noises it to
the next timestep as ``alpha_t' d + sigma_t' eps``. Their defaults are built on the methods above
(for a flow: ``d = z - s v``, ``z' = (1 - s') d + s' eps``, diffusers' ``FlowMatchLCMScheduler``);
the VP process overrides them with ``LCMScheduler``'s float32 arithmetic so a policy's samples are
its scheduler's bit for bit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half-precision latents are combined in float32, then cast back (keeps x0 at t=999 sane)."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a ``[B]`` (or scalar) tensor to broadcast against ``like`` (``[B, ...]``)."""
    values = values.reshape(-1)
    return values.view((values.shape[0],) + (1,) * (like.ndim - 1))


class NoiseProcess(ABC):
    """A teacher's forward process ``z_t = alpha_t x0 + sigma_t eps`` and its output
    parametrisation (see the module docstring for the table of methods).

    Attributes: ``prediction_type`` (what the network's raw output is) and
    ``num_train_timesteps`` (``T``: the solver grid's resolution).
    """

    prediction_type: str

    @property
    @abstractmethod
    def num_train_timesteps(self) -> int:
        """``T``: the training timesteps the skipping-step grid is cut from."""

    @abstractmethod
    def alpha_sigma(self, timesteps: torch.Tensor | int | float,
                    like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``alpha_t``, ``sigma_t`` shaped to broadcast with ``like`` (``[B, ...]``), in
        ``like``'s compute dtype (float32 for half-precision latents)."""

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor,
                  timesteps: torch.Tensor | int | float) -> torch.Tensor:
        """``z_t = alpha_t x0 + sigma_t eps``."""
        alpha, sigma = self.alpha_sigma(timesteps, x0)
        return alpha * x0 + sigma * noise

    @abstractmethod
    def predicted_origin(self, model_output: torch.Tensor, timesteps: torch.Tensor | int | float,
                         sample: torch.Tensor) -> torch.Tensor:
        """The x0-estimate ``x0_hat`` from the network's raw output at ``z_t = sample``."""

    @abstractmethod
    def predicted_noise(self, model_output: torch.Tensor, timesteps: torch.Tensor | int | float,
                        sample: torch.Tensor) -> torch.Tensor:
        """The noise estimate ``eps_hat`` from the network's raw output at ``z_t = sample``."""

    @abstractmethod
    def skipping_grid(self, num_points: int) -> torch.Tensor:
        """``[t_0, t_1, ..., t_N]`` (``N = num_points``), increasing: a training step starts at
        ``t_{n+1}`` and the teacher's solver moves to ``t_n``; ``t_0`` is the clean end."""

    @abstractmethod
    def consistency_output(self, sample: torch.Tensor, x0_pred: torch.Tensor,
                           timesteps: torch.Tensor | int | float, sigma_data: float = 0.5,
                           timestep_scaling: float = 10.0) -> torch.Tensor:
        """The consistency function ``f(z, t)`` from ``x0_hat``, with ``f(z, t_0) = z``-type
        boundary behaviour; keeps the gradient of ``x0_pred``. ``sigma_data`` and
        ``timestep_scaling`` are the LCM boundary scalings' (a process may not need them)."""

    @abstractmethod
    def ode_derivative(self, x0_pred: torch.Tensor, noise_pred: torch.Tensor,
                       like: torch.Tensor) -> torch.Tensor:
        """The probability-flow ODE's derivative ``dx/ds`` in the process's coordinates, from
        the (guided) estimates, in ``like``'s compute dtype."""

    @abstractmethod
    def heun_coefficient(self, t_start: torch.Tensor, t_end: torch.Tensor,
                         like: torch.Tensor) -> torch.Tensor:
        """``c`` with ``z_{t_end} = z_euler + c (d_2 - d_1)``: Heun's trapezoidal corrector from
        ``t_start`` to ``t_end`` (``d_i``: :meth:`ode_derivative` at the two ends)."""

    def sampler_denoised(self, model_output: torch.Tensor, timestep: torch.Tensor,
                         sample: torch.Tensor, *, timestep_scaling: float = 10.0,
                         clip_range: float | None = None) -> torch.Tensor:
        """``d = f(z, t)`` of the stochastic multistep consistency sampler at one (0-d)
        ``timestep``: ``x0_hat`` (clamped to ``+-clip_range`` when given) through
        :meth:`consistency_output`; keeps the gradient of ``model_output``."""
        x0 = self.predicted_origin(model_output, timestep, sample)
        if clip_range is not None:
            x0 = x0.clamp(-clip_range, clip_range)
        return self.consistency_output(sample, x0, timestep, timestep_scaling=timestep_scaling)

    def renoise_coefficients(self, timestep: torch.Tensor | int | float
                             ) -> tuple[torch.Tensor, torch.Tensor]:
        """``alpha_t``, ``sigma_t`` of one timestep as 0-d float32 CPU tensors: the sampler
        re-noises ``d`` to ``t`` as ``alpha_t d + sigma_t eps``."""
        alpha, sigma = self.alpha_sigma(torch.as_tensor(timestep).cpu(), torch.zeros(1))
        return alpha.reshape(()), sigma.reshape(())

    @abstractmethod
    def matches(self, other: "NoiseProcess") -> bool:
        """Whether ``other`` is the same process (a built solver must be on its teacher's)."""


__all__ = ["NoiseProcess"]
