"""The ``grpo`` recipe: group-relative policy optimisation of a few-step consistency student.

The student's stochastic multistep sampler is the policy: every step but the last re-noises
with a known Gaussian, so every step has a closed-form log-probability
(:mod:`rewardkit.consistency_policy`; RLCM's MDP). One optimiser step (the loop,
:mod:`rewardkit.training.loop`, runs it; this file is the algorithm)::

    rollout:  G samples per prompt, no gradient        z_0..z_{S-1}, log pi_old(z_{i+1} | z_i)
              r = R(decode(x0), prompt)                 any RM: no gradient is taken through it
              A = (r - mean_group(r)) / (std_group(r) + 1e-8), clipped to +-adv_clip_max
    loss:     for the policy steps i chosen (timestep_fraction of them, at random):
              ratio = exp(log pi_theta(z_{i+1} | z_i) - log pi_old(z_{i+1} | z_i))
              L_i = mean(max(-A ratio, -A clip(ratio, 1 - eps, 1 + eps)))
                    + kl_coef * mean(||mu_theta - mu_ref||^2 / (2 sigma_i^2))     (optional)
              L = mean_i L_i
    backward; clip; optimiser + LR step                 the loop

With ``rollout_chunks`` > 1 the rollout is sampled in chunks of whole groups and the RM scores
each chunk in a background thread while the next one samples, so an RM that runs on the host
(a numpy judge) or in another process (``remote``) overlaps the student's sampling.

A rollout serves ``updates_per_rollout`` optimiser steps (the ratio departs from 1 after the
first, and the clip acts). The KL term is the closed-form KL between the current policy's and
the starting student's Gaussians of the same step (they share ``sigma_i``); it needs the
starting weights: a frozen copy of a full student, or the LoRA student with its adapters off.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from typing import Any, Iterator

import torch
from torch import nn

from ..consistency_policy import ConsistencyChain, Rollout, rollout, step_log_prob
from .grpo_config import GRPOConfig
from .student_tuning import StudentTuningRecipe


def group_advantages(rewards: torch.Tensor, group_size: int, clip: float) -> torch.Tensor:
    """``(r - mean_group) / (std_group + 1e-8)`` of rewards laid out group after group (``G``
    consecutive samples share a prompt), clipped to ``+-clip``."""
    groups = rewards.float().reshape(-1, group_size)
    normalised = (groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True) + 1e-8)
    return normalised.reshape(-1).clamp(-clip, clip)


def clipped_surrogate(log_prob: torch.Tensor, old_log_prob: torch.Tensor,
                      advantages: torch.Tensor, clip_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped objective as a loss, ``mean(max(-A r, -A clip(r, 1 - eps, 1 + eps)))`` with
    ``r = exp(log_prob - old_log_prob)``; and the fraction of samples where the clip acts."""
    ratio = torch.exp(log_prob - old_log_prob.detach())
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    return torch.maximum(unclipped, clipped).mean(), (clipped > unclipped).float().mean()


@contextlib.contextmanager
def _adapters_off(unet: nn.Module, off: bool) -> Iterator[None]:
    """``unet`` as it started: its LoRA adapters disabled for the block (when ``off``)."""
    if not off:
        yield
        return
    unet.disable_adapters()
    try:
        yield
    finally:
        unet.enable_adapters()


def join_rollouts(parts: list[Rollout]) -> Rollout:
    """One rollout of the rows of ``parts`` (chunks of one rollout), in order."""
    if len(parts) == 1:
        return parts[0]
    # x0 is [N, ...]; the per-step tensors are [S-1, N, ...]
    return Rollout(*(torch.cat([getattr(p, f.name) for p in parts], dim=0 if f.name == "x0" else 1)
                     for f in fields(Rollout)))


class GRPORecipe(StudentTuningRecipe):
    """GRPO: group-relative policy optimisation over the student's stochastic sampler."""

    name = "grpo"
    Config = GRPOConfig
    progress_keys = ("reward", "lr", "step_time")

    def __init__(self, config: GRPOConfig, components: dict[str, Any] | None = None) -> None:
        super().__init__(config, components)
        self.config: GRPOConfig = config
        self.data: dict[str, Any] = {}  # the current rollout and its advantages
        self.uses_left = 0

    def build_models(self) -> nn.Module:
        """The student (with gradient checkpointing on request) and, for the KL term of a full
        student, a frozen copy of it."""
        student = super().build_models()
        if self.config.gradient_checkpointing:
            student.enable_gradient_checkpointing()
        self.reference = None
        if self.config.kl_coef and not getattr(student, "peft_config", None):
            self.reference = copy.deepcopy(student).requires_grad_(False).eval()
        return student

    def after_prepare(self) -> None:
        """The expert RM and the sampler's chain."""
        super().after_prepare()
        cfg = self.config
        self.chain = ConsistencyChain(self.backbone, cfg.sample_steps,
                                      original_inference_steps=cfg.num_ddim_timesteps,
                                      timestep_scaling=cfg.timestep_scaling_factor,
                                      device=self.device)

    # ================================================================ the algorithm

    def next_batch(self) -> dict[str, Any]:
        """Prompts for a new rollout; none while the current rollout still serves."""
        return {} if self.uses_left else next(self.batches)

    def collect(self, captions: list[str]) -> None:
        """A rollout of ``group_size`` samples per prompt, their rewards and advantages."""
        cfg, settings = self.config, self.sampler_settings()
        captions = [c for c in captions for _ in range(cfg.group_size)]
        cond = self.backbone.encode_prompts(captions).float()
        prompts = len(captions) // cfg.group_size
        size = cfg.group_size * math.ceil(prompts / min(cfg.rollout_chunks, prompts))
        parts, scored = [], []
        with ThreadPoolExecutor(max_workers=1) as scorer:  # r(chunk i) while chunk i+1 samples
            for start in range(0, len(captions), size):
                rows = slice(start, start + size)
                with self.autocast():
                    part = rollout(self.backbone, self.model, cond.index(rows), self.chain,
                                   guidance_scale=settings["guidance_scale"],
                                   generator=self.generator,
                                   time_cond_proj_dim=self.time_cond_proj_dim,
                                   latent_size=settings["latent_size"])
                with torch.no_grad():
                    images = self.backbone.decode_latents(part.x0).float()
                # in this step's context: the RM's NaN checks stay deferred to its one readback
                scored.append(scorer.submit(contextvars.copy_context().run, self.score, images,
                                            captions[rows]))
                parts.append(part)
            rewards = torch.cat([future.result() for future in scored])
        samples = join_rollouts(parts)
        policy_steps = self.chain.steps - 1
        count = max(1, math.ceil(cfg.timestep_fraction * policy_steps))
        chosen = torch.randperm(policy_steps, generator=self.generator)[:count].sort().values
        self.data = {"latents": samples.latents, "next_latents": samples.next_latents,
                     "log_probs": samples.log_probs, "rewards": rewards.detach().float(),
                     "advantages": group_advantages(rewards, cfg.group_size, cfg.adv_clip_max),
                     "steps": chosen, "captions": captions}
        self.uses_left = cfg.updates_per_rollout

    @torch.no_grad()
    def score(self, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """The expert's rewards of decoded samples (no gradient: any RM works)."""
        return self.expert(images, captions)

    def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The clipped policy loss (and the KL term) over the rollout's chosen policy steps."""
        cfg = self.config
        if batch:
            self.collect(batch["captions"])
        data = self.data
        cond = self.backbone.encode_prompts(data["captions"]).float()
        policy, kl, clipped = [], [], []
        for index in data["steps"].tolist():
            with self.autocast():
                log_prob, mean = step_log_prob(
                    self.backbone, self.model, cond, self.chain, index, data["latents"][index],
                    data["next_latents"][index], guidance_scale=cfg.guidance_scale,
                    time_cond_proj_dim=self.time_cond_proj_dim)
            loss, fraction = clipped_surrogate(log_prob, data["log_probs"][index],
                                               data["advantages"], cfg.clip_range)
            policy.append(loss)
            clipped.append(fraction)
            if cfg.kl_coef:
                kl.append(self.kl_to_reference(cond, index, mean))
        self.clip_fraction = torch.stack(clipped).mean()
        terms = {"policy_loss": torch.stack(policy).mean()}
        if kl:
            terms["kl_loss"] = cfg.kl_coef * torch.stack(kl).mean()
        return terms

    def kl_to_reference(self, cond: Any, index: int, mean: torch.Tensor) -> torch.Tensor:
        """``KL(pi_theta || pi_ref)`` of policy step ``index``: the two Gaussians share sigma,
        so it is ``||mu_theta - mu_ref||^2 / (2 sigma^2)`` per sample, averaged."""
        data, unwrapped = self.data, self.unwrapped_model
        reference = self.reference if self.reference is not None else unwrapped
        with torch.no_grad(), _adapters_off(unwrapped, self.reference is None), self.autocast():
            _, ref_mean = step_log_prob(
                self.backbone, reference, cond, self.chain, index, data["latents"][index],
                data["next_latents"][index], guidance_scale=self.config.guidance_scale,
                time_cond_proj_dim=self.time_cond_proj_dim)
        _, std = self.chain.policy(mean, index)
        return ((mean - ref_mean).pow(2).flatten(1).sum(1) / (2 * std ** 2)).mean()

    def after_step(self) -> dict[str, torch.Tensor]:
        """The rollout's reward (mean and spread) and how often the clip acted."""
        self.uses_left -= 1
        rewards = self.data["rewards"]
        return {"reward": rewards.mean(), "reward_std": rewards.std(),
                "clip_fraction": self.clip_fraction}

    # ================================================================ state

    def checkpoint_state(self) -> dict[str, Any]:
        """A rollout that still serves steps (so a resumed run continues on it)."""
        data = {k: v for k, v in self.data.items() if k != "captions"} if self.uses_left else {}
        return {"uses_left": self.uses_left, "rollout": data,
                "captions": self.data.get("captions", []) if self.uses_left else []}

    def restore_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`checkpoint_state`."""
        self.uses_left = int(state["uses_left"])
        if self.uses_left:
            self.data = {**state["rollout"], "captions": list(state["captions"])}
            self.data = {k: v.to(self.device) if torch.is_tensor(v) else v
                         for k, v in self.data.items()}


__all__ = ["GRPOConfig", "GRPORecipe", "clipped_surrogate", "group_advantages"]
