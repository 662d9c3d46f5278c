"""The teacher's noise schedule, as one object the backbone owns and everything else shares.

``z_t = alpha_t x0 + sigma_t eps`` with ``alpha_t = sqrt(abar_t)``, ``sigma_t = sqrt(1 - abar_t)``,
``abar`` the teacher scheduler's ``alphas_cumprod`` (length ``T``), and the teacher's output
parametrisation (``prediction_type``: ``epsilon``, ``v_prediction`` or ``sample``). The training
step, the solvers and the guided denoiser take a :class:`NoiseSchedule` instead of the two loose
values; ``abar`` is kept in float64 and cached once per device, so a step copies nothing.
"""

from __future__ import annotations

import torch

from .errors import ConfigError

#: The teacher output parametrisations diffusers schedulers know (``prediction_type``).
PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction", "sample")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half-precision latents are combined in float32, then cast back (keeps x0 at t=999 sane)."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a ``[B]`` (or scalar) tensor to broadcast against ``like`` (``[B, ...]``)."""
    values = values.reshape(-1)
    return values.view((values.shape[0],) + (1,) * (like.ndim - 1))


class NoiseSchedule:
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

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor,
                  timesteps: torch.Tensor | int) -> torch.Tensor:
        """``z_t = alpha_t x0 + sigma_t eps`` (diffusers' ``add_noise``)."""
        alpha, sigma = self.alpha_sigma(timesteps, x0)
        return alpha * x0 + sigma * noise

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

    def __repr__(self) -> str:
        return (f"NoiseSchedule(T={self.num_train_timesteps}, "
                f"prediction_type={self.prediction_type!r})")


__all__ = ["NoiseSchedule", "PREDICTION_TYPES"]
