"""The stochastic multistep consistency sampler as a policy: a log-probability for every step.

The sampler's chain of S steps takes, at step ``i`` and timestep ``t_i``, the student's
consistency function (its boundary-conditioned estimate of the clean latents) ``d_i = f(z_i, t_i)``
and, except on the last step, re-noises it to the next timestep with the teacher's forward
process and fresh Gaussian noise::

    z_{i+1} = alpha(t_{i+1}) * d_i + sigma(t_{i+1}) * eps,    eps ~ N(0, I)

with ``alpha``, ``sigma`` the backbone's noise process (``backbone.schedule``):

- DDPM teachers (SD 1.x/2.x, SDXL): ``d_i = c_out(t_i) x0_hat + c_skip(t_i) z_i``,
  ``alpha = sqrt(abar)``, ``sigma = sqrt(1 - abar)``: ``LCMScheduler``'s chain, which
  :func:`rewardkit.sample_consistency` and a saved student's pipeline run;
- flow teachers (SD 3 / 3.5): ``d_i = z_i - s_i v``, ``alpha = 1 - s``, ``sigma = s``
  (``z = (1 - s) x0 + s eps``): diffusers' ``FlowMatchLCMScheduler`` chain on the student's
  ``FlowMatchEulerDiscreteScheduler`` timesteps. The saved student samples the deterministic
  Euler chain on the same consistency function instead (``z_{i+1} = (1 - s') d_i + s' eps_hat``):
  the policy is the stochastic sampler and the pipeline its mean-noise counterpart, as Flow-GRPO
  trains on an SDE and samples the ODE.

So each such step is a Gaussian policy ``pi_theta(z_{i+1} | z_i, c) = N(mu_i, sigma_i^2 I)``
with ``mu_i = alpha(t_{i+1}) d_i`` and ``sigma_i = sigma(t_{i+1})``, and its log-density is
closed-form (:func:`gaussian_log_prob`). This is the MDP that RLCM (Oertell et al. 2024)
optimises; Flow-GRPO's SDE steps play the same role for flow models. The last step is
deterministic (the output ``x0 = d_{S-1}``): a chain of S steps has ``S - 1`` policy steps.

:func:`rollout` samples the chain without gradients and records each policy step's input,
output and log-probability; :func:`step_log_prob` re-evaluates one step's log-probability under
the current weights, with gradients (the ratio ``pi_theta / pi_old`` of policy-gradient methods).
Both share :class:`ConsistencyChain`, which asks the noise process for ``d_i`` and the step's
coefficients (tests check a DDPM rollout against :func:`rewardkit.sample_consistency` bit for
bit and its log-probabilities against diffusers' own ``denoised``, and a flow rollout against
``FlowMatchLCMScheduler``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from .backbones.conditioning import Conditioning
from .errors import ConfigError
from .sampling_chain import initial_noise_sigma, set_chain_timesteps
from .sampling_grad import guidance_input

__all__ = ["ConsistencyChain", "Rollout", "gaussian_log_prob", "rollout", "step_log_prob"]


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor | float) -> torch.Tensor:
    """``log N(x; mean, std^2 I)`` per sample: summed over every dimension but the first."""
    std = torch.as_tensor(std, dtype=torch.float32, device=x.device)
    squared = ((x.float() - mean.float()) / std).pow(2).flatten(1).sum(1)
    dims = x[0].numel()
    return -0.5 * squared - dims * (torch.log(std) + 0.5 * math.log(2 * math.pi))


class ConsistencyChain:
    """One few-step schedule of ``steps`` steps on ``backbone``: its timesteps, the boundary-
    conditioned denoising of each step, and each policy step's Gaussian, all through the
    backbone's noise process (``backbone.schedule``)."""

    def __init__(self, backbone: Any, steps: int, *, original_inference_steps: int = 50,
                 timestep_scaling: float = 10.0, device: torch.device | str = "cpu") -> None:
        if steps < 2:
            raise ConfigError(f"sample_steps must be at least 2 for a policy (a {steps}-step "
                              "chain has no stochastic step), got {steps}")
        scheduler = backbone.lcm_scheduler(original_inference_steps, timestep_scaling)
        config = scheduler.config
        if config.get("thresholding"):
            raise ConfigError("the teacher's scheduler uses dynamic thresholding, which the "
                              "consistency policy does not model; set thresholding=False")
        set_chain_timesteps(scheduler, steps, device, original_inference_steps)
        self.scheduler = scheduler
        self.process = backbone.schedule
        self.steps = steps
        #: the scheduler's timesteps as it holds them (0-d tensors: int64 DDPM timesteps,
        #: float model times ``T s`` for a flow), so the boundary scalings round as in its step
        self.timesteps = list(scheduler.timesteps)
        self.init_noise_sigma = initial_noise_sigma(scheduler)
        self.timestep_scaling = float(config.get("timestep_scaling", timestep_scaling))
        self.clip_range = (float(config.get("clip_sample_range", 1.0))
                           if config.get("clip_sample") else None)

    def denoise(self, out: torch.Tensor, index: int, z: torch.Tensor) -> torch.Tensor:
        """``d_i = f(z_i, t_i)`` for model output ``out`` at step ``index`` (``LCMScheduler.step``'s
        ``denoised`` for a DDPM teacher, ``z - s v`` for a flow)."""
        return self.process.sampler_denoised(out, self.timesteps[index], z,
                                             timestep_scaling=self.timestep_scaling,
                                             clip_range=self.clip_range)

    def policy(self, denoised: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean ``alpha' d_i`` and std ``sigma'`` of policy step ``index`` (``index < steps -
        1``; ``alpha'``, ``sigma'`` the process's at the next timestep), in fp32."""
        alpha, sigma = self.process.renoise_coefficients(self.timesteps[index + 1])
        return alpha.to(denoised.device) * denoised.float(), sigma.to(denoised.device)


@dataclass
class Rollout:
    """One sampled chain per row: every policy step's input and output, and its log-probability
    when sampled (all fp32, detached)."""

    latents: torch.Tensor  #: ``[S-1, N, C, h, w]``: ``z_i``, each policy step's input
    next_latents: torch.Tensor  #: ``[S-1, N, C, h, w]``: ``z_{i+1}``, what it drew
    log_probs: torch.Tensor  #: ``[S-1, N]``: ``log pi(z_{i+1} | z_i)`` when sampled
    x0: torch.Tensor  #: ``[N, C, h, w]``: the chain's output (scaled latents)


def _predict(backbone: Any, unet: nn.Module, z: torch.Tensor, t: torch.Tensor, cond: Conditioning,
             w_embedding: torch.Tensor | None) -> torch.Tensor:
    dtype = next(unet.parameters()).dtype
    timesteps = t.expand(z.shape[0]).to(z.device)
    return backbone.predict(unet, z.to(dtype), timesteps, cond.to(dtype=dtype), w_embedding)


@torch.no_grad()
def rollout(backbone: Any, unet: nn.Module, cond: Conditioning, chain: ConsistencyChain, *,
            guidance_scale: float = 7.5, generator: torch.Generator | None = None,
            time_cond_proj_dim: int | None = None,
            latent_size: int | Sequence[int] | None = None) -> Rollout:
    """Sample ``chain`` with ``unet`` for every row of ``cond`` and record its policy steps.

    Noise comes from ``generator`` as :func:`rewardkit.sample_consistency` draws it, so the
    same generator state gives the same ``x0``."""
    batch, device = len(cond), cond.prompt_embeds.device
    dtype = next(unet.parameters()).dtype
    side = latent_size if latent_size is not None else int(backbone.sample_size)
    height, width = (side, side) if isinstance(side, int) else (int(s) for s in side)
    noise_device = generator.device if generator is not None else torch.device("cpu")
    z = torch.randn((batch, backbone.latent_channels, height, width), generator=generator,
                    device=noise_device)
    z = (z * chain.init_noise_sigma).to(device=device, dtype=dtype)
    w_embedding = guidance_input(guidance_scale, time_cond_proj_dim, batch, device, dtype)
    inputs, outputs, log_probs = [], [], []
    for index, t in enumerate(chain.timesteps):
        denoised = chain.denoise(_predict(backbone, unet, z, t, cond, w_embedding), index, z)
        if index == chain.steps - 1:
            return Rollout(torch.stack(inputs), torch.stack(outputs), torch.stack(log_probs),
                           denoised.to(dtype).float())
        mean, std = chain.policy(denoised.to(dtype), index)
        eps = torch.randn(z.shape, generator=generator, device=noise_device,
                          dtype=denoised.dtype).to(device)
        z_next = (mean.to(denoised.dtype) + std.to(denoised.dtype) * eps).to(dtype)
        inputs.append(z.float())
        outputs.append(z_next.float())
        log_probs.append(gaussian_log_prob(z_next, mean, std))
        z = z_next
    raise AssertionError("unreachable: the chain ends on its last step")


def step_log_prob(backbone: Any, unet: nn.Module, cond: Conditioning, chain: ConsistencyChain,
                  index: int, z: torch.Tensor, z_next: torch.Tensor, *,
                  guidance_scale: float = 7.5,
                  time_cond_proj_dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``log pi_theta(z_next | z)`` of policy step ``index`` under ``unet``'s current weights
    (with gradients), and the step's mean ``mu_i`` (fp32)."""
    dtype = next(unet.parameters()).dtype
    w_embedding = guidance_input(guidance_scale, time_cond_proj_dim, z.shape[0], z.device, dtype)
    out = _predict(backbone, unet, z, chain.timesteps[index], cond, w_embedding)
    mean, std = chain.policy(chain.denoise(out, index, z.to(dtype)), index)
    return gaussian_log_prob(z_next, mean, std), mean
