"""The ``rg-lcd`` recipe: Reward Guided Latent Consistency Distillation (Li et al., TMLR 2024).

It is the ``lcd`` recipe (:class:`rewardkit.recipes.lcd.LCDRecipe`) plus a reward on the online
student's single-step prediction ``f_theta`` (the same tensor the LCD loss uses). The paper's
Algorithm 1, as this file's methods run it on the training loop::

    losses(batch):  f_theta, f_theta-, L_LCD = lcd_forward(batch)          # LCD
                    L = L_LCD - beta * mean(R(D(f_theta), c))               # direct
                    L = L_LCD - beta * mean(P(f_theta, c))                  # LRM, P frozen
    (the loop: backward, clip, optimiser step)
    after_step():   theta- <- mu theta- + (1 - mu) theta                   # LCD's EMA
                    LRM: the expert R judges f_theta, f_theta- and z0 of a
                    sub-batch; P takes one step on those preferences        # update_proxy

with ``beta = reward_scale`` (1.0, reference default).

Two modes, chosen by ``proxy``:

- **direct** (``proxy="none"``): ``reward = R(decode(f_theta), captions)``. ``f_theta`` is decoded
  by the frozen VAE (``latents / scaling_factor``, decode, ``/2 + 0.5``, clamp to [0, 1]) and the
  RM's score back-propagates through the RM and the decoder into the student. Only RMs with
  ``differentiable = True``; any other RM is refused before training, by name.
- **LRM** (``proxy="lrm"`` or any registered proxy, the default): ``reward = P(f_theta, c)``, the
  latent proxy RM's score, computed in latent space with the proxy frozen (no decode, no expert
  RM in the student's graph). After the student's optimiser step, a random sub-batch of
  ``proxy_batch_size`` prompts is drawn; its three candidates (student ``f_theta``, EMA target
  ``f_theta-``, ground truth ``z0``) are decoded in chunks of ``vae_decode_batch_size`` and scored
  by the expert RM under ``no_grad`` (so a non-differentiable RM works), and the proxy takes one
  step of its own optimiser (AdamW, ``proxy_lr``) on the pairwise ``proxy_loss_type`` loss
  (:mod:`rewardkit.proxies.losses`). Only the proxy's configured trainable layers ever train.

The online schedule beyond the paper (``proxy_warmup_steps``, ``proxy_updates_per_step`` with a
replay buffer, ``proxy_rehearsal_set``, ``expert_logit_scale``; all off by default), the held-out
``proxy_heldout_accuracy``, what is logged, and the reference code's defects this file does not
copy are in docs/rg-lcd.md and docs/lrm-online.md. The proxy is not wrapped by
``accelerate.prepare``: :class:`~rewardkit.proxies.ProxyUpdater` averages its gradients across
processes, so every process keeps an identical proxy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..distributed import broadcast_from_main
from ..errors import ConfigError
from ..files import write_aside
from ..proxies.base import ProxyRewardModel
from ..proxies.factory import NO_PROXY, PROXY_DIR
from ..proxies.losses import GT, STUDENT, TARGET
from ..proxies.preference_set import (PreferenceSet, build_preference_set, load_for_teacher,
                                      other_latent_size, preference_accuracy)
from ..proxies.rehearsal import Rehearsal
from ..proxies.replay import CandidateReplay
from ..proxies.update import ProxyUpdater, sample_candidates, score_candidates
from ..rewards.base import RewardModel
from ..rewards.build import build_expert, follow_directly
from ..training.step import StepOutputs
from .presets import after_run
from .lcd import LCDRecipe
from .rg_lcd_config import RGLCDConfig

HELDOUT_DIR = "proxy_heldout"
REPLAY_WEIGHTS = "proxy_replay.safetensors"


class RGLCDRecipe(LCDRecipe):
    """Reward guided latent consistency distillation: LCD plus a (proxy) reward on f_theta."""

    name = "rg-lcd"
    Config = RGLCDConfig
    progress_keys = ("lcd_loss", "reward_loss", "expert_reward", "lr", "step_time")
    component_keys = {**LCDRecipe.component_keys, "reward": ("reward", RewardModel),
                      "proxy": ("proxy", ProxyRewardModel)}

    def __init__(self, config: RGLCDConfig, components: dict[str, Any] | None = None) -> None:
        super().__init__(config, components)
        self.config: RGLCDConfig = config
        self.reward_model: RewardModel | None = None
        self.proxy_model: ProxyRewardModel | None = None
        self.proxy_updater: ProxyUpdater | None = None
        self.replay: CandidateReplay | None = None
        self.heldout: PreferenceSet | None = None

    def run(self, progress: bool = True) -> Path:
        """Train (see :class:`LCDRecipe`); with ``report``, the preset's after-run step (the
        embedded world: evaluate teacher and student, write the report)."""
        output = super().run(progress)
        if self.config.report and self.accelerator.is_main_process:
            after_run(self, output)
        return output

    def setup(self) -> None:
        """LCD's set-up; then the proxy update draws rehearsal pairs from the run's generator
        (saved in checkpoints, so a resumed run draws the same pairs)."""
        super().setup()
        if self.proxy_updater is not None:
            self.proxy_updater.generator = self.generator

    @property
    def direct(self) -> bool:
        """True when the RM is optimised directly (``proxy="none"``)."""
        return self.config.proxy == NO_PROXY

    # ================================================================ building

    def after_prepare(self) -> None:
        """LCD's EMA target; then the expert RM and, in LRM mode, the proxy and its updater."""
        super().after_prepare()
        cfg, accelerator = self.config, self.accelerator
        self.reward_model = self.build_reward_model(accelerator.device)
        if self.direct:
            follow_directly(self.reward_model, cfg.reward, self.backbone,
                            vae_gradient_checkpointing=cfg.vae_gradient_checkpointing)
            return
        proxy = self.build_proxy().to(accelerator.device)
        proxy.freeze().eval()
        if accelerator.num_processes > 1:
            broadcast_from_main(proxy)
        self.proxy_model = proxy
        rehearsal = None
        if cfg.proxy_rehearsal_set:
            pset = load_for_teacher("proxy_rehearsal_set", cfg.proxy_rehearsal_set,
                                    self.backbone.text_embed_dim)
            self.check_latent_side(pset.latents, f"proxy_rehearsal_set: "
                                   f"'{cfg.proxy_rehearsal_set}'",
                                   f"rehearse a set built at resolution {cfg.resolution} "
                                   "(lrm-pretrain --resolution writes one in "
                                   "output_dir/preference_set) or drop proxy_rehearsal_set")
            rehearsal = Rehearsal(pset, cfg.proxy_rehearsal_batch_size, cfg.proxy_rehearsal_weight)
        self.proxy_updater = ProxyUpdater(proxy, loss_type=cfg.proxy_loss_type,
                                          smooth_gt_label=cfg.smooth_gt_label, lr=cfg.proxy_lr,
                                          rehearsal=rehearsal)
        self.replay = CandidateReplay(cfg.proxy_replay_size) if cfg.proxy_replay_size else None
        if cfg.proxy_eval_num_prompts:
            self.heldout = self.on_main_process(self.heldout_preference_set)

    def heldout_preference_set(self) -> PreferenceSet:
        """The held-out preference set: built once (from data the proxy never trains on) and
        saved in ``output_dir/proxy_heldout``, so a resumed run measures on the very same set."""
        from ..data import build_loader
        from ..data.specs import resolve_source

        cfg = self.config
        folder = self.output_dir / HELDOUT_DIR
        if (folder / "preference_set.json").is_file():
            pset = PreferenceSet.load(folder)
            self.check_latent_side(pset.latents, f"resolution: the held-out preference set of "
                                   f"this run ('{folder}')", "resume at the resolution the run "
                                   "started with, or delete that folder to build a new one")
            return pset
        spec = cfg.proxy_eval_shards_path_or_url or cfg.train_shards_path_or_url
        source = resolve_source(spec, cfg.resolution)
        loader = build_loader(source, resolution=cfg.resolution,
                              batch_size=cfg.proxy_eval_num_prompts, seed=cfg.proxy_eval_seed,
                              vae_scaling_factor=self.backbone.vae_scaling_factor)
        batch = next(iter(loader))
        generator = torch.Generator().manual_seed(cfg.proxy_eval_seed)
        if "latents" in batch:
            latents = batch["latents"].to(self.accelerator.device).float()
        else:
            latents = self.backbone.encode_images(batch["pixel_values"].to(self.accelerator.device),
                                                  generator=generator).float()
        self.accelerator.print(f"building the held-out proxy preference set "
                               f"({latents.shape[0]} prompts, scored by '{cfg.reward}')")
        pset = build_preference_set(
            self.backbone, self.expert_scores, latents, batch["captions"],
            student=self.unwrapped_student, time_cond_proj_dim=cfg.unet_time_cond_proj_dim,
            student_guidance_scale=cfg.validation_guidance_scale, seed=cfg.proxy_eval_seed,
            batch_size=cfg.vae_decode_batch_size)
        write_aside(folder, pset.save)
        return pset

    @property
    def latent_side(self) -> int:
        """The side of the training latents (``resolution`` through the backbone's VAE): every
        set or buffer of latents the proxy is measured or trained on has it."""
        return self.backbone.latent_side(self.config.resolution)

    def check_latent_side(self, latents: torch.Tensor, what: str, fix: str) -> None:
        """Refuse ``latents`` (of ``what``) of another size than :attr:`latent_side`."""
        found = other_latent_size(latents, self.latent_side)
        if found:
            side = self.latent_side
            raise ConfigError(f"{what} holds {found} latents but resolution "
                              f"{self.config.resolution} trains on {side}x{side} ones; {fix}")

    def validation_metrics(self) -> dict[str, float]:
        """``proxy_heldout_accuracy`` (overall and per pair type) on the held-out set."""
        if self.proxy_model is None or self.heldout is None:
            return {}
        return preference_accuracy(self.proxy_model, self.heldout)

    def build_reward_model(self, device: torch.device) -> RewardModel:
        """The expert RM on ``device`` (in the mixed-precision dtype unless ``reward_params``
        sets one)."""
        cfg = self.config
        return build_expert(cfg.reward, cfg.reward_params, device=device,
                            mixed_precision=cfg.mixed_precision, given=self.components.get("reward"))

    def trained_reward_model(self) -> RewardModel:
        """The expert RM (directly, or through the proxy that learns it)."""
        return self.reward_model

    def build_proxy(self) -> ProxyRewardModel:
        """The proxy: from ``pretrained_proxy`` if given, else new, sized for the backbone."""
        from ..proxies.factory import build_proxy

        cfg = self.config
        if "proxy" in self.components:
            return self.components["proxy"]
        return build_proxy(cfg.proxy, cfg.proxy_params, self.backbone, cfg.pretrained_proxy)

    # ================================================================ the step

    def expert_scores(self, latents: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """The expert RM's scores of scaled latents (decoded unless it reads latents)."""
        assert self.reward_model is not None
        if self.reward_model.input_space == "latents":
            return self.reward_model(latents, captions)
        return self.reward_model(self.backbone.decode_latents(latents).float(), captions)

    def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Algorithm 1's student loss: ``L = L_LCD - beta * mean(reward(f_theta))``."""
        step = self.step = self.forward(batch)  # f_theta, f_theta-, L_LCD (lcd_forward)
        return {"lcd_loss": step.lcd_loss, "reward_loss": self.reward_loss(step)}

    def reward_loss(self, step: StepOutputs) -> torch.Tensor:
        """``-beta * mean(reward)`` on ``f_theta``: the expert RM of the decoded ``f_theta``
        (direct), or the frozen proxy's score of the latent ``f_theta`` (LRM)."""
        cfg = self.config
        if self.direct:
            reward = self.expert_scores(step.student_x0, step.captions)
            step.extras["expert_reward"] = reward.detach().mean()
        else:
            assert self.proxy_model is not None
            self.proxy_model.freeze().eval()
            reward = self.proxy_model.score(step.student_x0, self.backbone.proxy_text(step.cond))
            step.extras["lrm_reward"] = reward.detach().mean()
        # step.global_step counts the steps done before this one: off for steps 1..warm-up
        beta = cfg.reward_scale if step.global_step >= cfg.proxy_warmup_steps else 0.0
        return -beta * reward.float().mean()

    def after_step(self) -> dict[str, torch.Tensor | float]:
        """LCD's EMA update; then, in LRM mode, the proxy learns the expert's preferences."""
        metrics = super().after_step()
        self.step.global_step = self.global_step + 1  # steps completed, this one included
        return {**metrics, **self.update_proxy(self.step)}

    def update_proxy(self, step: StepOutputs) -> dict[str, torch.Tensor]:
        """Direct mode: report the expert reward. LRM mode: the expert judges the student's,
        the EMA target's and the ground truth's latents of a sub-batch, and the proxy takes one
        step on its preferences (``proxy_update_every``: on every N-th step only)."""
        if self.direct:
            return {"expert_reward": step.extras["expert_reward"]}
        assert self.proxy_updater is not None and self.reward_model is not None
        cfg = self.config
        if step.global_step % cfg.proxy_update_every:
            return {"lrm_reward": step.extras["lrm_reward"]}  # no judging on this step
        chosen = sample_candidates(step.student_x0, step.target_x0, step.latents,
                                   self.backbone.proxy_text(step.cond), step.captions,
                                   min(cfg.proxy_batch_size, step.student_x0.shape[0]),
                                   generator=self.generator)
        size = chosen.latents.shape[1]
        expert = score_candidates(chosen, self.expert_scores, cfg.vae_decode_batch_size)
        scale = self.reward_model.logit_scale
        if scale is None:
            scale = cfg.expert_logit_scale
        metrics = self.proxy_updater.step(chosen.latents, chosen.prompt_embeds, expert, scale)
        if self.replay is not None:
            self.replay.add(chosen.latents, chosen.prompt_embeds, expert)
        for _ in range(cfg.proxy_updates_per_step - 1):
            if self.replay is not None:
                latents, embeds, scores = self.replay.sample(size, generator=self.generator)
            else:
                latents, embeds, scores = chosen.latents, chosen.prompt_embeds, expert
            self.proxy_updater.step(latents, embeds, scores, scale)
        metrics.update(expert_reward=expert[STUDENT].mean(),
                       expert_reward_target=expert[TARGET].mean(),
                       expert_reward_gt=expert[GT].mean(),
                       lrm_reward=step.extras["lrm_reward"])
        return metrics

    # ================================================================ persistence

    def checkpoint_state(self) -> dict[str, Any]:
        """The proxy optimiser's state (its weights go to ``proxy/``) and how many triples the
        replay buffer holds (the buffer goes to :data:`REPLAY_WEIGHTS`)."""
        if self.proxy_updater is None:
            return {}
        return {"proxy_updater": self.proxy_updater.state_dict(),
                "replay_entries": len(self.replay) if self.replay is not None else 0,
                "replay_latent_side": int(self.latent_side)}

    def restore_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Restore the proxy optimiser (the replay buffer is read by :meth:`load_files`)."""
        if self.proxy_updater is not None and "proxy_updater" in state:
            self.proxy_updater.load_state_dict(state["proxy_updater"])
        self._replay_entries = int(state.get("replay_entries", 0))
        self._replay_side = state.get("replay_latent_side")

    def save_files(self, checkpoint_dir: Path) -> None:
        """LCD's target; the proxy in ``checkpoint_dir/proxy`` (and the replay buffer, if any)."""
        super().save_files(checkpoint_dir)
        if self.proxy_model is not None:
            self.proxy_model.save_pretrained(Path(checkpoint_dir) / PROXY_DIR)
        if self.replay is not None and len(self.replay):
            from safetensors.torch import save_file

            save_file(self.replay.state_tensors(), str(Path(checkpoint_dir) / REPLAY_WEIGHTS))

    def load_files(self, checkpoint_dir: Path) -> None:
        """LCD's target; the proxy's weights from ``checkpoint_dir/proxy``."""
        super().load_files(checkpoint_dir)
        if self.proxy_model is None:
            return
        from ..proxies.base import WEIGHTS_NAME
        from ..training.safe_state import load_tensor_file

        weights = Path(checkpoint_dir) / PROXY_DIR / WEIGHTS_NAME
        if not weights.is_file():
            raise ConfigError(f"resume_from_checkpoint: '{checkpoint_dir}' has no proxy weights "
                              f"({PROXY_DIR}/{WEIGHTS_NAME}); was it written by rg-lcd with "
                              "a proxy?")
        device = next(self.proxy_model.parameters()).device
        self.proxy_model.load_state_dict(load_tensor_file(weights))
        replay = Path(checkpoint_dir) / REPLAY_WEIGHTS
        expected = getattr(self, "_replay_entries", 0)
        resized = getattr(self, "_replay_side", None) not in (None, self.latent_side)
        if self.replay is not None and expected and not replay.is_file() and not resized:
            raise ConfigError(f"resume_from_checkpoint: '{checkpoint_dir}' has no {REPLAY_WEIGHTS} "
                              f"although its proxy replay buffer held {expected} triples, so the "
                              "run would not continue as it was; resume from another checkpoint "
                              "(or start a new run)")
        if self.replay is not None and replay.is_file():
            state = load_tensor_file(replay)
            if state:
                self.check_latent_side(state["latents"], f"resume_from_checkpoint: the proxy "
                                       f"replay buffer in '{checkpoint_dir}'", "resume at the "
                                       f"resolution it was saved at, or delete its "
                                       f"{REPLAY_WEIGHTS} to start the buffer empty")
            self.replay.load_state_tensors(state, device=device)

    def save_final(self) -> Path:
        """The student pipeline, plus the trained proxy in ``output_dir/proxy``."""
        path = super().save_final()
        if self.proxy_model is not None:
            self.on_main_process(lambda: write_aside(self.output_dir / PROXY_DIR,
                                                     self.proxy_model.save_pretrained))
        return path


__all__ = ["RGLCDConfig", "RGLCDRecipe"]
