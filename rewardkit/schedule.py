"""The variance-preserving (DDPM) noise process of SD 1.x/2.x and SDXL teachers, as one object the
backbone owns and everything else shares (the :class:`~rewardkit.noise_process.NoiseProcess`
interface; flow-matching teachers have :class:`~rewardkit.flow_matching.FlowMatchProcess`).

``z_t = alpha_t x0 + sigma_t eps`` with ``alpha_t = sqrt(abar_t)``, ``sigma_t = sqrt(1 - abar_t)``,
``abar`` the teacher scheduler's ``alphas_cumprod`` (length ``T``), and the teacher's output
parametrisation (``prediction_type``: ``epsilon``, ``v_prediction`` or ``sample``). The training
step, the solvers and the guided denoiser take a :class:`NoiseSchedule` instead of the two loose
values; ``abar`` is kept in float64 and cached once per device, so a step copies nothing.
"""

from __future__ import annotations

import torch

from .errors import ConfigError
from .lcm_boundary import consistency_output, lcm_scheduler_denoised
from .noise_process import NoiseProcess, _compute_dtype, _per_sample

#: The teacher output parametrisations diffusers schedulers know (``prediction_type``).
PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction", "sample")


class NoiseSchedule(NoiseProcess):
    """``abar`` and ``prediction_type`` of a teacher, with the maths that needs only them.

    Args:
        alphas_cumprod: the teacher scheduler's cumulative alphas ``abar``, shape ``[T]``.
        prediction_type: what the teacher's raw output is (``epsilon``, ``v_prediction``,
            ``sample``).
    """

    def __init__(self, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon") -> None:
        if prediction_type not in PREDICTION_TYPES:
            raise ConfigError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, "
                              f"got {prediction_type!r}")
        self.alphas_cumprod = torch.as_tensor(alphas_cumprod).detach().to("cpu", torch.float64)
        self.prediction_type = prediction_type
        self._on_device: dict[torch.device, torch.Tensor] = {}

    @property
    def num_train_timesteps(self) -> int:
        """``T``, the length of the schedule."""
        return self.alphas_cumprod.shape[0]

    def abar(self, device: torch.device | str) -> torch.Tensor:
        """``alphas_cumprod`` in float64 on ``device`` (copied there once, then cached)."""
        device = torch.device(device)
        if device not in self._on_device:
            self._on_device[device] = self.alphas_cumprod.to(device)
        return self._on_device[device]

    def alpha_sigma(self, timesteps: torch.Tensor | int,
                    like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``alpha_t``, ``sigma_t`` shaped to broadcast with ``like`` (``[B, ...]``), computed in
        float64 and rounded to ``like``'s compute dtype (float32 for half-precision latents).
        ``timesteps``: integer DDPM timesteps ``[B]`` (a 0-d tensor or an int is broadcast)."""
        t = torch.as_tensor(timesteps, device=like.device).long()
        if t.ndim == 0:
            t = t.expand(like.shape[0])
        abar = self.abar(like.device)[t]
        dtype = _compute_dtype(like.dtype)
        return (_per_sample(abar.sqrt().to(dtype), like),
                _per_sample((1 - abar).sqrt().to(dtype), like))

    def predicted_origin(self, model_output: torch.Tensor, timesteps: torch.Tensor | int,
                         sample: torch.Tensor) -> torch.Tensor:
        """The x0-estimate ``x0_hat`` from the teacher's raw output.

        - ``epsilon``: ``(z_t - sigma_t * out) / alpha_t``
        - ``v_prediction``: ``alpha_t * z_t - sigma_t * out``
        - ``sample``: ``out``
        """
        if self.prediction_type == "sample":
            return model_output
        alpha, sigma = self.alpha_sigma(timesteps, sample)
        z, out = sample.to(alpha.dtype), model_output.to(alpha.dtype)
        if self.prediction_type == "epsilon":
            x0 = (z - sigma * out) / alpha
        else:
            x0 = alpha * z - sigma * out
        return x0.to(sample.dtype)

    def predicted_noise(self, model_output: torch.Tensor, timesteps: torch.Tensor | int,
                        sample: torch.Tensor) -> torch.Tensor:
        """The noise estimate ``eps_hat`` from the teacher's raw output.

        - ``epsilon``: ``out``
        - ``v_prediction``: ``alpha_t * out + sigma_t * z_t``
        - ``sample``: ``(z_t - alpha_t * out) / sigma_t``
        """
        if self.prediction_type == "epsilon":
            return model_output
        alpha, sigma = self.alpha_sigma(timesteps, sample)
        z, out = sample.to(alpha.dtype), model_output.to(alpha.dtype)
        if self.prediction_type == "v_prediction":
            eps = alpha * out + sigma * z
        else:
            eps = (z - alpha * out) / sigma
        return eps.to(sample.dtype)

    def skipping_grid(self, num_points: int) -> torch.Tensor:
        """``[0, k - 1, 2k - 1, ..., Nk - 1]`` with ``k = T // N`` (``0, 19, 39, ..., 999`` for
        N=50, T=1000): integer DDPM timesteps; a step from ``t_{n+1}`` ends at
        ``t_n = max(t_{n+1} - k, 0)``, the LCD reference's grid."""
        skip = self.num_train_timesteps // num_points
        starts = (torch.arange(1, num_points + 1) * skip).round().long() - 1
        return torch.cat([torch.zeros(1, dtype=torch.long), starts])

    def consistency_output(self, sample: torch.Tensor, x0_pred: torch.Tensor,
                           timesteps: torch.Tensor | int, sigma_data: float = 0.5,
                           timestep_scaling: float = 10.0) -> torch.Tensor:
        """LCM's ``f(z, t) = c_skip(t) z + c_out(t) x0_hat``
        (:func:`rewardkit.lcm_boundary.consistency_output`): ``f(z, 0) = z`` exactly."""
        return consistency_output(sample, x0_pred, timesteps, sigma_data, timestep_scaling)

    def ode_derivative(self, x0_pred: torch.Tensor, noise_pred: torch.Tensor,
                       like: torch.Tensor) -> torch.Tensor:
        """``eps_hat``: in the variance-exploding coordinates ``x = z / alpha``,
        ``s = sigma / alpha`` the probability-flow ODE reads ``dx/ds = eps``."""
        return noise_pred.to(_compute_dtype(like.dtype))

    def heun_coefficient(self, t_start: torch.Tensor, t_end: torch.Tensor,
                         like: torch.Tensor) -> torch.Tensor:
        """``(sigma_n - alpha_n sigma / alpha) / 2`` (``alpha_n (s_n - s) / 2`` back in ``z``);
        zero where ``sigma_n = 0`` (``abar = 1``: the step falls back to Euler there)."""
        alpha, sigma = self.alpha_sigma(t_start, like)
        alpha_prev, sigma_prev = self.alpha_sigma(t_end, like)
        coefficient = (sigma_prev - alpha_prev * sigma / alpha) / 2
        return torch.where(sigma_prev > 0, coefficient, torch.zeros_like(coefficient))

    def sampler_denoised(self, model_output: torch.Tensor, timestep: torch.Tensor,
                         sample: torch.Tensor, *, timestep_scaling: float = 10.0,
                         clip_range: float | None = None) -> torch.Tensor:
        """``LCMScheduler.step``'s ``denoised`` (its float32 arithmetic, bit for bit)."""
        return lcm_scheduler_denoised(self.alphas_cumprod.float(), self.prediction_type,
                                      model_output, timestep, sample, timestep_scaling,
                                      clip_range)

    def renoise_coefficients(self, timestep: torch.Tensor | int
                             ) -> tuple[torch.Tensor, torch.Tensor]:
        """``sqrt(abar_t)``, ``sqrt(1 - abar_t)`` in float32, as ``LCMScheduler.step`` re-noises."""
        abar = self.alphas_cumprod.float()[int(timestep)]
        return abar.sqrt(), (1 - abar).sqrt()

    def matches(self, other: NoiseProcess) -> bool:
        """The same ``abar`` (to 1e-6)."""
        if not isinstance(other, NoiseSchedule):
            return False
        own, theirs = self.alphas_cumprod, other.alphas_cumprod
        return own.shape == theirs.shape and bool(torch.allclose(own, theirs, atol=1e-6))

    def __repr__(self) -> str:
        return (f"NoiseSchedule(T={self.num_train_timesteps}, "
                f"prediction_type={self.prediction_type!r})")


__all__ = ["NoiseSchedule", "PREDICTION_TYPES"]
