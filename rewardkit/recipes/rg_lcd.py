"""The ``rg-lcd`` recipe: Reward Guided Latent Consistency Distillation (Li et al., TMLR 2024).

It is the ``lcd`` loop (:class:`rewardkit.recipes.lcd.LCDRecipe`) plus a reward on the online
student's single-step prediction ``f_theta`` (the same tensor the LCD loss uses)::

    L = L_LCD - beta * mean(reward)            beta = reward_scale (1.0, reference default)

Two modes, chosen by ``proxy``:

- **direct** (``proxy="none"``): ``reward = R(decode(f_theta), captions)``. ``f_theta`` is decoded
  by the frozen VAE (``latents / scaling_factor``, decode, ``/2 + 0.5``, clamp to [0, 1]) and the
  RM's score back-propagates through the RM and the decoder into the student. Only RMs with
  ``differentiable = True``; any other RM is refused before training, by name.
- **LRM** (``proxy="lrm"`` or any registered proxy, the default): ``reward = P(f_theta, c)``, the
  latent proxy RM's score, computed in latent space with the proxy frozen (no decode, no expert
  RM in the student's graph). After the student's optimiser step, a random sub-batch of
  ``rm_batch_size`` prompts is drawn; its three candidates (student ``f_theta``, EMA target
  ``f_theta-``, ground truth ``z0``) are decoded in chunks of ``vae_decode_batch_size`` and scored
  by the expert RM under ``no_grad`` (so a non-differentiable RM works), and the proxy takes one
  step of its own optimiser (AdamW, ``rm_lr``) on the pairwise ``latent_rm_loss_type`` loss
  (:mod:`rewardkit.proxies.losses`). Only the proxy's configured trainable layers ever train.

Reference defects not copied (PAPER.md §3.4): the LRM lock is kept (the reference re-enabled
gradients on all LRM layers before every update); cross-entropy labels are per-pair argmaxes;
the expert sees the sub-batch's own captions (the reference passed the unpermuted ones).

Checkpoints hold the proxy (``latent_rm/``, loadable with ``pretrained_latent_rm``) and, in
``extra_state.pt``, its optimiser; both are restored on resume. The final proxy is saved to
``output_dir/latent_rm``. The proxy is not wrapped by ``accelerate.prepare``: under several
processes :class:`~rewardkit.proxies.ProxyUpdater` averages its gradients across ranks, so
every rank keeps an identical proxy.

Logged per step: ``lcd_loss``, ``reward_loss``, ``expert_reward`` (the expert's mean reward of
the student's x0: the whole batch in direct mode, the sub-batch in LRM mode), and in LRM mode
``lrm_reward``, ``proxy_loss``, ``proxy_accuracy``, ``proxy_logit_scale``,
``expert_reward_target`` and ``expert_reward_gt``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import ConfigError
from ..proxies.base import ProxyRewardModel
from ..proxies.losses import LOSS_TYPES
from ..proxies.update import ProxyUpdater, sample_candidates
from ..rewards.base import RewardModel
from ..training.config import OURS, LCDConfig, _f
from ..training.step import StepOutputs
from .lcd import LCDRecipe

NO_PROXY = "none"
LATENT_RM_DIR = "latent_rm"


@dataclass
class RGLCDConfig(LCDConfig):
    """Reward guided LCD: the LCD config plus the reward model, the proxy and their settings."""

    output_dir: str = _f("rg-lcd-model", "Where checkpoints, validation images, metrics and the "
                         "final pipeline go", OURS)
    tracker_project_name: str = _f("rewardkit-rg-lcd", "Tracker project name", OURS)
    reward: Optional[str] = _f(None, "Registered reward model (the expert RM), e.g. clip-score, "
                               "hpsv2, jpeg-compressibility (required)", OURS)
    reward_params: dict = _f({}, "Keyword arguments for the reward model", OURS)
    proxy: str = _f("lrm", "Registered proxy RM trained online ('lrm'), or 'none' to optimise "
                    "the RM directly (differentiable RMs only)")
    proxy_params: dict = _f({}, "Keyword arguments for the proxy (e.g. trainable, image_tower)",
                            OURS)
    reward_scale: float = _f(1.0, "beta: weight of the reward term, L = L_LCD - beta * reward")
    rm_batch_size: int = _f(16, "Prompts per proxy update (3 candidates each)")
    rm_lr: float = _f(3.3e-6, "Learning rate of the proxy's AdamW")
    latent_rm_loss_type: str = _f("distillation", "Proxy loss: distillation (KL to the expert's "
                                  "pairwise softmax) or cross_entropy (pairwise winner, gt wins)")
    smooth_gt_label: bool = _f(False, "In gt pairs the expert gives to the generated sample, "
                               "target (0.5, 0.5)")
    pretrained_latent_rm: Optional[str] = _f(None, "Start the proxy from a saved one (a folder "
                                             "written by save_pretrained, e.g. a checkpoint's "
                                             "latent_rm/)")
    world_report: bool = _f(False, "After training, evaluate teacher and student on the embedded "
                            "world and write report.md, comparison.png and training curves (the "
                            "default world run turns it on)", OURS)
    vae_decode_batch_size: int = _f(16, "Latents decoded (and scored) per chunk in the proxy "
                                    "update")

    def validate(self) -> None:
        """LCD checks plus the reward and proxy settings (registered names, values, paths)."""
        super().validate()
        from ..plugins import get_host

        if not self.reward:
            raise ConfigError(
                "reward: no reward model given; pass --reward NAME (see `rewardkit list reward`)")
        host = get_host()
        reward_spec = host.get("reward", self.reward)
        if self.proxy != NO_PROXY:
            host.get("proxy", self.proxy)
        elif getattr(reward_spec.factory, "differentiable", True) is False:
            raise ConfigError(_not_differentiable(self.reward))
        if self.proxy == NO_PROXY and self.pretrained_latent_rm:
            raise ConfigError("pretrained_latent_rm is only used with a proxy; set proxy=lrm or "
                              "drop pretrained_latent_rm")
        if self.reward_scale < 0:
            raise ConfigError(f"reward_scale must not be negative, got {self.reward_scale}")
        for key in ("rm_batch_size", "vae_decode_batch_size", "rm_lr"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key} must be positive, got {getattr(self, key)}")
        if self.latent_rm_loss_type not in LOSS_TYPES:
            raise ConfigError(f"latent_rm_loss_type must be one of {', '.join(LOSS_TYPES)}, got "
                              f"{self.latent_rm_loss_type!r}")
        if self.pretrained_latent_rm:
            path = Path(os.path.expanduser(self.pretrained_latent_rm))
            if not path.is_dir():
                raise ConfigError(f"pretrained_latent_rm: '{self.pretrained_latent_rm}' is not "
                                  "a folder")


def broadcast_from_main(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (an unseeded init differs per rank)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def _not_differentiable(name: str) -> str:
    return (f"reward model '{name}' is not differentiable, so it cannot be optimised directly "
            f"(proxy=none); use proxy=lrm to learn from it through the latent proxy RM")


class RGLCDRecipe(LCDRecipe):
    """Reward guided latent consistency distillation: LCD plus a (proxy) reward on f_theta."""

    name = "rg-lcd"
    Config = RGLCDConfig

    def __init__(self, config: RGLCDConfig) -> None:
        super().__init__(config)
        self.config: RGLCDConfig = config
        self.reward_model: RewardModel | None = None
        self.proxy_model: ProxyRewardModel | None = None
        self.proxy_updater: ProxyUpdater | None = None

    @classmethod
    def embedded_defaults(cls) -> dict[str, Any]:
        """The embedded world: the shipped teacher, LRM learning from ``world-judge``, a report."""
        from ..world.default_run import default_rg_lcd_overrides

        return {**default_rg_lcd_overrides(), "world_report": True}

    def run(self, progress: bool = True) -> Path:
        """Train (see :class:`LCDRecipe`); with ``world_report``, evaluate and write the report."""
        output = super().run(progress)
        if self.config.world_report and self.accelerator.is_main_process:
            from ..world.default_run import finalize_world_run

            report = finalize_world_run(output, teacher=self.config.pretrained_teacher_model)
            self.accelerator.print(f"report: {report}")
        return output

    @property
    def direct(self) -> bool:
        """True when the RM is optimised directly (``proxy="none"``)."""
        return self.config.proxy == NO_PROXY

    # ================================================================ building

    def setup_extra(self, accelerator: Any) -> None:
        """Build the expert RM and, in LRM mode, the proxy and its updater."""
        cfg = self.config
        self.reward_model = self.build_reward_model(accelerator.device)
        if self.direct:
            if not getattr(self.reward_model, "differentiable", False):
                raise ConfigError(_not_differentiable(cfg.reward))
            return
        proxy = self.build_proxy().to(accelerator.device)
        proxy.freeze().eval()
        if accelerator.num_processes > 1:
            broadcast_from_main(proxy)
        self.proxy_model = proxy
        self.proxy_updater = ProxyUpdater(proxy, loss_type=cfg.latent_rm_loss_type,
                                          smooth_gt_label=cfg.smooth_gt_label, lr=cfg.rm_lr)

    def build_reward_model(self, device: torch.device) -> RewardModel:
        """The expert RM, moved to ``device`` once."""
        from ..plugins import get_host

        cfg = self.config
        rm = get_host().get("reward", cfg.reward).build(**cfg.reward_params)
        if not isinstance(rm, RewardModel):
            raise ConfigError(f"reward '{cfg.reward}' built a {type(rm).__name__}, not a "
                              "rewardkit.rewards.RewardModel")
        rm.to(device)
        return rm

    def build_proxy(self) -> ProxyRewardModel:
        """The proxy: from ``pretrained_latent_rm`` if given, else new, sized for the backbone."""
        from ..plugins import get_host

        cfg = self.config
        spec = get_host().get("proxy", cfg.proxy)
        if cfg.pretrained_latent_rm:
            load = getattr(spec.factory, "from_pretrained", None)
            if load is None:
                raise ConfigError(f"proxy '{cfg.proxy}' cannot load pretrained_latent_rm (its "
                                  "factory has no from_pretrained)")
            proxy = load(os.path.expanduser(cfg.pretrained_latent_rm), **cfg.proxy_params)
        else:
            known = {p.name for p in spec.params}
            sizes = {"latent_channels": self.backbone.latent_channels,
                     "text_dim": self.backbone.text_embed_dim}
            params = {k: v for k, v in sizes.items() if k in known}
            proxy = spec.build(**{**params, **cfg.proxy_params})
        if not isinstance(proxy, ProxyRewardModel):
            raise ConfigError(f"proxy '{cfg.proxy}' built a {type(proxy).__name__}, not a "
                              "rewardkit.proxies.ProxyRewardModel")
        return proxy

    # ================================================================ the step

    def expert_scores(self, latents: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """The expert RM's scores of scaled latents (decoded unless it reads latents)."""
        assert self.reward_model is not None
        if self.reward_model.input_space == "latents":
            return self.reward_model(latents, captions)
        return self.reward_model(self.backbone.decode_latents(latents).float(), captions)

    def extra_losses(self, step: StepOutputs) -> dict[str, torch.Tensor]:
        """``reward_loss = -beta * mean(reward)`` on ``f_theta`` (RM direct, or the frozen proxy)."""
        cfg = self.config
        if self.direct:
            reward = self.expert_scores(step.student_x0, step.captions)
            step.extras["expert_reward"] = float(reward.detach().mean())
        else:
            assert self.proxy_model is not None
            self.proxy_model.freeze().eval()
            reward = self.proxy_model.score(step.student_x0, step.prompt_embeds)
            step.extras["lrm_reward"] = float(reward.detach().mean())
        return {"reward_loss": -cfg.reward_scale * reward.float().mean()}

    def after_optimizer_step(self, step: StepOutputs) -> dict[str, float]:
        """Direct mode: report the expert reward. LRM mode: one proxy update from the expert."""
        if self.direct:
            return self._mean_over_processes({"expert_reward": step.extras["expert_reward"]})
        assert self.proxy_updater is not None and self.reward_model is not None
        cfg = self.config
        chosen = sample_candidates(step.student_x0, step.target_x0, step.latents,
                                   step.prompt_embeds, step.captions,
                                   min(cfg.rm_batch_size, step.student_x0.shape[0]),
                                   generator=self.generator)
        size = chosen.latents.shape[1]
        flat = chosen.latents.flatten(0, 1)
        captions = chosen.captions * 3
        with torch.no_grad():
            chunks = [self.expert_scores(flat[i:i + cfg.vae_decode_batch_size],
                                         captions[i:i + cfg.vae_decode_batch_size])
                      for i in range(0, flat.shape[0], cfg.vae_decode_batch_size)]
        expert = torch.cat(chunks).view(3, size)
        metrics = self.proxy_updater.step(chosen.latents, chosen.prompt_embeds, expert,
                                          self.reward_model.logit_scale)
        metrics.update(expert_reward=float(expert[0].mean()),
                       expert_reward_target=float(expert[1].mean()),
                       expert_reward_gt=float(expert[2].mean()),
                       lrm_reward=step.extras["lrm_reward"])
        return self._mean_over_processes(metrics)

    # ================================================================ persistence

    def extra_state_dict(self) -> dict[str, Any]:
        """The proxy optimiser's state (its weights go to ``latent_rm/``)."""
        if self.proxy_updater is None:
            return {}
        return {"proxy_updater": self.proxy_updater.state_dict()}

    def load_extra_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the proxy optimiser."""
        if self.proxy_updater is not None and "proxy_updater" in state:
            self.proxy_updater.load_state_dict(state["proxy_updater"])

    def save_extra(self, checkpoint_dir: Path) -> None:
        """Write the proxy into ``checkpoint_dir/latent_rm``."""
        if self.proxy_model is not None:
            self.proxy_model.save_pretrained(Path(checkpoint_dir) / LATENT_RM_DIR)

    def load_extra(self, checkpoint_dir: Path) -> None:
        """Load the proxy's weights from ``checkpoint_dir/latent_rm``."""
        if self.proxy_model is None:
            return
        from safetensors.torch import load_file

        from ..proxies.base import WEIGHTS_NAME

        weights = Path(checkpoint_dir) / LATENT_RM_DIR / WEIGHTS_NAME
        if not weights.is_file():
            raise ConfigError(f"resume_from_checkpoint: '{checkpoint_dir}' has no proxy weights "
                              f"({LATENT_RM_DIR}/{WEIGHTS_NAME}); was it written by rg-lcd with "
                              "a proxy?")
        device = next(self.proxy_model.parameters()).device
        self.proxy_model.load_state_dict(load_file(str(weights), device=str(device)))

    def save_final(self) -> Path:
        """The student pipeline, plus the trained proxy in ``output_dir/latent_rm``."""
        path = super().save_final()
        if self.proxy_model is not None and self.accelerator.is_main_process:
            self.proxy_model.save_pretrained(self.output_dir / LATENT_RM_DIR)
        return path


__all__ = ["RGLCDConfig", "RGLCDRecipe"]
