"""The rectified-flow noise process of SD 3 / 3.5 teachers, as diffusers'
``FlowMatchEulerDiscreteScheduler`` defines it (the
:class:`~rewardkit.noise_process.NoiseProcess` interface).

Forward process and parametrisation, with ``s`` in ``[0, 1]`` the noise level (diffusers'
``sigma``) and ``t = T s`` what the transformer is fed (``T = num_train_timesteps = 1000``)::

    z_s  = (1 - s) x0 + s eps              alpha = 1 - s, sigma = s          (add_noise)
    v    = eps - x0                         the network predicts the velocity  ("flow_prediction")
    x0_hat  = z - s v                                                          (predicted_origin)
    eps_hat = z + (1 - s) v                                                    (predicted_noise)
    dz/ds   = v = eps_hat - x0_hat          the probability-flow ODE           (ode_derivative)

The training noise levels are diffusers' shifted ones: ``s_j = shift u / (1 + (shift - 1) u)``
with ``u = (j + 1) / T`` for ``j = 0 .. T-1`` (SD 3 / 3.5: ``shift = 3``), so the skipping-step
grid is ``t_0 = 0`` (the clean end, ``s = 0``) and ``t_n = T s_{nk - 1}`` for ``n = 1 .. N``,
``k = T // N``, ending at ``s = 1`` (pure noise).

The consistency function is ``f(z, s) = x0_hat(z, s) = z - s v``: the boundary condition
``f(z, 0) = z`` holds by the parametrisation itself, so no ``c_skip``/``c_out`` scalings are
needed (they are LCM's fix for epsilon- and v-prediction, whose ``x0_hat`` is not ``z`` at the
clean end). It is also exactly the x0 that diffusers' flow schedulers form from a velocity, which
is why a saved student samples with plain ``FlowMatchEulerDiscreteScheduler``.

The teacher's Euler step from ``s`` to ``s'`` with a guided ``(x0_hat, eps_hat)`` is
``(1 - s') x0_hat + s' eps_hat = z + (s' - s) v``; Heun's corrector adds
``(s' - s)(v_2 - v_1) / 2`` (:meth:`FlowMatchProcess.heun_coefficient`).
"""

from __future__ import annotations

import torch

from .errors import ConfigError
from .noise_process import NoiseProcess, _compute_dtype, _per_sample

#: The network output of a flow-matching teacher: the velocity ``v = eps - x0``.
FLOW_PREDICTION = "flow_prediction"


class FlowMatchProcess(NoiseProcess):
    """Rectified flow ``z_s = (1 - s) x0 + s eps`` with velocity prediction and a timestep shift.

    Args:
        shift: the scheduler's ``shift`` (SD 3 / 3.5: 3.0); 1.0 is the unshifted flow.
        num_train_timesteps: ``T``, the scheduler's ``num_train_timesteps`` (1000).
    """

    prediction_type = FLOW_PREDICTION

    def __init__(self, shift: float = 3.0, num_train_timesteps: int = 1000) -> None:
        if not shift > 0:
            raise ConfigError(f"the flow scheduler's shift must be positive, got {shift}")
        if num_train_timesteps < 1:
            raise ConfigError(f"num_train_timesteps must be positive, got {num_train_timesteps}")
        self.shift = float(shift)
        self._num_train_timesteps = int(num_train_timesteps)

    @classmethod
    def from_scheduler_config(cls, config: dict, where: str = "the teacher") -> "FlowMatchProcess":
        """The process of a ``FlowMatchEulerDiscreteScheduler`` config; a resolution-dependent
        (dynamic) shift or a non-default sigma schedule is refused, naming ``where``."""
        for key in ("use_dynamic_shifting", "use_karras_sigmas", "use_exponential_sigmas",
                    "use_beta_sigmas", "invert_sigmas", "stochastic_sampling"):
            if config.get(key):
                raise ConfigError(f"{where}: its scheduler sets {key}, which the flow-matching "
                                  "backbone does not support (a static shift is)")
        if config.get("shift_terminal"):
            raise ConfigError(f"{where}: its scheduler sets shift_terminal, which the "
                              "flow-matching backbone does not support")
        return cls(shift=config.get("shift", 1.0),
                   num_train_timesteps=config.get("num_train_timesteps", 1000))

    @property
    def num_train_timesteps(self) -> int:
        """``T``: model time is ``t = T s``."""
        return self._num_train_timesteps

    def sigmas(self) -> torch.Tensor:
        """The ``T`` training noise levels ``s_j`` (increasing, float64): diffusers' shifted
        ones."""
        total = self.num_train_timesteps
        u = torch.arange(1, total + 1, dtype=torch.float64) / total
        return self.shift * u / (1 + (self.shift - 1) * u)

    def noise_level(self, timesteps: torch.Tensor | int | float,
                    like: torch.Tensor) -> torch.Tensor:
        """``s = t / T`` per sample, ``[B]``, in float64 on ``like``'s device."""
        t = torch.as_tensor(timesteps, device=like.device).to(torch.float64)
        if t.ndim == 0:
            t = t.expand(like.shape[0])
        return t / self.num_train_timesteps

    def alpha_sigma(self, timesteps: torch.Tensor | int | float,
                    like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``1 - s`` and ``s`` (``s = t / T``), broadcast to ``like`` in its compute dtype."""
        s = self.noise_level(timesteps, like)
        dtype = _compute_dtype(like.dtype)
        return _per_sample((1 - s).to(dtype), like), _per_sample(s.to(dtype), like)

    def predicted_origin(self, model_output: torch.Tensor, timesteps: torch.Tensor | int | float,
                         sample: torch.Tensor) -> torch.Tensor:
        """``x0_hat = z - s v``."""
        _, s = self.alpha_sigma(timesteps, sample)
        x0 = sample.to(s.dtype) - s * model_output.to(s.dtype)
        return x0.to(sample.dtype)

    def predicted_noise(self, model_output: torch.Tensor, timesteps: torch.Tensor | int | float,
                        sample: torch.Tensor) -> torch.Tensor:
        """``eps_hat = z + (1 - s) v``."""
        one_minus_s, _ = self.alpha_sigma(timesteps, sample)
        eps = sample.to(one_minus_s.dtype) + one_minus_s * model_output.to(one_minus_s.dtype)
        return eps.to(sample.dtype)

    def skipping_grid(self, num_points: int) -> torch.Tensor:
        """``[0, T s_{k-1}, T s_{2k-1}, ..., T s_{Nk-1}]`` in float32 (what the transformer is
        fed), ``k = T // N``: the DDPM grid's indices on the shifted noise levels, with the clean
        end at ``s = 0`` exactly."""
        skip = self.num_train_timesteps // num_points
        index = (torch.arange(1, num_points + 1) * skip).round().long() - 1
        starts = (self.sigmas()[index] * self.num_train_timesteps).to(torch.float32)
        return torch.cat([torch.zeros(1, dtype=torch.float32), starts])

    def consistency_output(self, sample: torch.Tensor, x0_pred: torch.Tensor,
                           timesteps: torch.Tensor | int | float, sigma_data: float = 0.5,
                           timestep_scaling: float = 10.0) -> torch.Tensor:
        """``f(z, s) = x0_hat`` (``= z - s v``): ``f(z, 0) = z`` by the parametrisation, so the
        LCM scalings (``sigma_data``, ``timestep_scaling``) do not apply."""
        return x0_pred.to(sample.dtype)

    def ode_derivative(self, x0_pred: torch.Tensor, noise_pred: torch.Tensor,
                       like: torch.Tensor) -> torch.Tensor:
        """The velocity ``v = eps_hat - x0_hat`` (``dz/ds``)."""
        dtype = _compute_dtype(like.dtype)
        return noise_pred.to(dtype) - x0_pred.to(dtype)

    def heun_coefficient(self, t_start: torch.Tensor, t_end: torch.Tensor,
                         like: torch.Tensor) -> torch.Tensor:
        """``(s' - s) / 2``: Heun on ``dz/ds = v`` is ``z + (s' - s)(v_1 + v_2) / 2``."""
        _, s = self.alpha_sigma(t_start, like)
        _, s_end = self.alpha_sigma(t_end, like)
        return (s_end - s) / 2

    def matches(self, other: NoiseProcess) -> bool:
        """The same shift and ``T``."""
        return (isinstance(other, FlowMatchProcess) and other.shift == self.shift
                and other.num_train_timesteps == self.num_train_timesteps)

    def __repr__(self) -> str:
        return f"FlowMatchProcess(shift={self.shift:g}, T={self.num_train_timesteps})"


__all__ = ["FlowMatchProcess", "FLOW_PREDICTION"]
