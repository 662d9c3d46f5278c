"""The ``draft`` recipe: reward fine-tuning of a few-step student by back-propagating the reward
through the last K steps of its own sampling chain (DRaFT-K, Clark et al. 2024; K = 1 with
the chain's last step is DRaFT-1; with ``random_stop`` the chain stops at a random step k and
that step's x0 prediction is scored, the gradient through step k only: ReFL, Xu et al. 2023,
which AlignProp's truncation also is).

One optimiser step (the loop, :mod:`rewardkit.training.loop`, runs it; this file is the
algorithm)::

    c = E(prompts); z_T ~ N(0, I)                                   # losses()
    k  = S, or k ~ U{1..S} with random_stop (ReFL)
    x0 = sample_consistency(student, c, steps=S, stop_after=k, grad_steps="last K")
                                                      # graph through the K steps ending at k
    r  = R(decode(x0), prompts)          direct (proxy="none": a differentiable RM)
       | P(x0, c)                        through the proxy (any RM: the latent proxy's score)
    L  = -beta * mean(r) + lambda * ||theta - theta_0||^2
         + lambda_LCD * L_LCD(stop_grad(x0))     # optional: the teacher's ODE on own samples
    backward; clip; optimiser + LR step                             # the loop
    proxy: the RM judges 3 samples per prompt, the proxy takes one  # after_step()
           pairwise step on its preferences (as in rg-lcd)

The proxy bridge is rg-lcd's latent proxy RM used the same way: frozen while the student
steps, trained online afterwards on the expert's preferences, so a non-differentiable RM
drives a gradient method. Its three candidates per prompt are the trained sample and two
more samples of the current student from fresh noise (a prompt-only recipe has no ground
truth and no EMA target). The output is a diffusers pipeline folder (``output_dir/pipeline``,
``LCMScheduler``) and, with a proxy, ``output_dir/proxy``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..distributed import broadcast_from_main
from ..files import write_aside
from ..proxies.base import ProxyRewardModel
from ..proxies.factory import PROXY_DIR, build_proxy
from ..proxies.pretrain_sets import expert_on_latents
from ..proxies.update import ProxyUpdater
from ..rewards.build import follow_directly
from ..sampling_grad import sample_consistency
from ..training.step import LCDHyper, lcd_forward
from .draft_config import DraftConfig
from .student_tuning import StudentTuningRecipe

#: Candidates the expert judges per prompt in a proxy update.
CANDIDATES = 3


class DraftRecipe(StudentTuningRecipe):
    """DRaFT-K: the reward's gradient through the last K steps of a few-step student's chain."""

    name = "draft"
    Config = DraftConfig
    progress_keys = ("reward", "lr", "step_time")
    component_keys = {**StudentTuningRecipe.component_keys,
                      "proxy": ("proxy", ProxyRewardModel)}

    def __init__(self, config: DraftConfig, components: dict[str, Any] | None = None) -> None:
        super().__init__(config, components)
        self.config: DraftConfig = config
        self.proxy_model: Any = None
        self.proxy_updater: ProxyUpdater | None = None
        self.stop: int | None = None  # the step this batch's chain stops at (random_stop)

    # ================================================================ models

    def build_models(self) -> nn.Module:
        """The student, and the frozen copy of its trained weights ``init_l2`` pulls towards."""
        student = super().build_models()
        self.initial = ([p.detach().clone() for p in self.optimizer_parameters(student)]
                        if self.config.init_l2 else [])
        return student

    def after_prepare(self) -> None:
        """The expert RM and, through a proxy, the proxy and its online updater."""
        super().after_prepare()
        cfg = self.config
        if cfg.lcd_weight:
            self.build_lcd_regulariser()
        if cfg.direct:
            follow_directly(self.expert, cfg.reward, self.backbone,
                            vae_gradient_checkpointing=cfg.vae_gradient_checkpointing)
            return
        proxy = self.components.get("proxy") or build_proxy(cfg.proxy, cfg.proxy_params,
                                                            self.backbone, cfg.pretrained_proxy)
        self.proxy_model = proxy.to(self.device).freeze().eval()
        if self.accelerator.num_processes > 1:
            broadcast_from_main(proxy)  # a new proxy's initialisation, identical on every rank
        # the soft (distillation) loss: the hard-label one makes candidate 2 a ground truth
        # that always wins, and here it is one more sample
        self.proxy_updater = ProxyUpdater(proxy, loss_type="distillation", lr=cfg.proxy_lr)
        self.judge = expert_on_latents(self.expert, self.backbone)

    def build_lcd_regulariser(self) -> None:
        """The LCD term's solver (DDIM on the teacher's schedule) and numbers: the guidance
        ``w = guidance_scale - 1`` the student samples with, LCD's pseudo-Huber distance."""
        from ..plugins import get_host

        cfg = self.config
        self.solver = get_host().get("solver", "ddim").build(
            alphas_cumprod=self.backbone.schedule, num_ddim_timesteps=cfg.num_ddim_timesteps)
        self.lcd_hyper = LCDHyper(w_min=cfg.guidance_scale - 1, w_max=cfg.guidance_scale - 1,
                                  time_cond_proj_dim=self.time_cond_proj_dim,
                                  timestep_scaling=cfg.timestep_scaling_factor)

    # ================================================================ the algorithm

    def sample(self, cond: Any, grad_steps: str | None) -> torch.Tensor:
        """x0 latents of the student's ``sample_steps``-step chain from fresh noise (drawn from
        the run's generator), stopped after :attr:`stop` steps, with the graph kept through
        ``grad_steps``."""
        with self.autocast():
            return sample_consistency(
                self.backbone, self.model, cond, grad_steps=grad_steps, generator=self.generator,
                gradient_checkpointing=self.config.sampler_checkpointing, stop_after=self.stop,
                **self.sampler_settings()).float()

    def draw_stop(self) -> int | None:
        """The step the chain stops at: k ~ U{1..S} with ``random_stop`` (from the run's
        generator, so a resume draws the same), else None (the whole chain)."""
        cfg = self.config
        if not cfg.random_stop:
            return None
        return int(torch.randint(1, cfg.sample_steps + 1, (1,), generator=self.generator))

    def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``-beta * mean(r(x0))`` (and ``lambda * ||theta - theta_0||^2``) on one batch."""
        cfg = self.config
        self.captions = batch["captions"]
        self.cond = self.backbone.encode_prompts(self.captions).float()
        self.stop = self.draw_stop()
        self.x0 = self.sample(self.cond, "last 1" if cfg.random_stop else cfg.grad_steps)
        if cfg.direct:
            reward = self.expert(self.backbone.decode_latents(self.x0).float(), self.captions)
        else:
            reward = self.proxy_model.score(self.x0, self.backbone.proxy_text(self.cond))
        self.mean_reward = reward.detach().float().mean()
        terms = {"reward_loss": -cfg.reward_scale * reward.float().mean()}
        if cfg.init_l2:
            drift = sum((p.float() - p0.float()).pow(2).sum() for p, p0 in
                        zip(self.optimizer_parameters(self.unwrapped_model), self.initial))
            terms["init_l2_loss"] = cfg.init_l2 * drift
        if cfg.lcd_weight:
            terms["lcd_loss"] = cfg.lcd_weight * self.lcd_term()
        return terms

    def lcd_term(self) -> torch.Tensor:
        """``L_LCD`` with this batch's samples as the data: the student at a noised sample
        against its own (no_grad) output one teacher ODE step earlier."""
        latents = self.x0.detach()
        return lcd_forward(
            backbone=self.backbone, solver=self.solver, student=self.model,
            target=self.unwrapped_model, latents=latents, cond=self.cond,
            uncond=self.backbone.empty_conditioning(latents.shape[0]).float(),
            captions=self.captions, hyper=self.lcd_hyper, generator=self.generator,
            autocast=self.autocast, global_step=self.global_step).lcd_loss

    def after_step(self) -> dict[str, torch.Tensor]:
        """The step's reward (the RM's, or the proxy's); through a proxy, its online update."""
        metrics = {"reward": self.mean_reward}
        if self.stop is not None:
            metrics["stop_step"] = float(self.stop)
        if self.proxy_updater is not None and self.global_step % self.config.proxy_update_every == 0:
            metrics.update(self.update_proxy())
        return metrics

    def update_proxy(self) -> dict[str, torch.Tensor]:
        """The expert judges three samples per prompt (the trained one and two more from fresh
        noise, no gradient); the proxy takes one pairwise step on its preferences."""
        cfg = self.config
        with torch.no_grad():
            others = [self.sample(self.cond, None) for _ in range(CANDIDATES - 1)]
            latents = torch.stack([self.x0.detach(), *others])
            expert = torch.stack([self.judge(x, self.captions).float() for x in latents])
        scale = getattr(self.expert, "logit_scale", None)
        scale = cfg.expert_logit_scale if scale is None else scale
        metrics = self.proxy_updater.step(latents, self.backbone.proxy_text(self.cond), expert,
                                          scale)
        return {**metrics, "expert_reward": expert[0].mean()}

    # ================================================================ state and output

    def checkpoint_state(self) -> dict[str, Any]:
        """The proxy's weights and optimiser (through a proxy)."""
        if self.proxy_updater is None:
            return {}
        return {"proxy": self.proxy_model.state_dict(),
                "proxy_updater": self.proxy_updater.state_dict()}

    def restore_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`checkpoint_state`."""
        self.proxy_model.load_state_dict(state["proxy"])
        self.proxy_updater.load_state_dict(state["proxy_updater"])

    def save_extra(self) -> None:
        """The trained proxy in ``output_dir/proxy`` (through a proxy)."""
        if self.proxy_model is not None:
            write_aside(self.output_dir / PROXY_DIR, self.proxy_model.save_pretrained)


__all__ = ["DraftRecipe", "DraftConfig"]
