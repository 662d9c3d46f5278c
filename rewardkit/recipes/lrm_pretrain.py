"""The ``lrm-pretrain`` recipe: pretrain the latent proxy RM (LRM) before reward-guided LCD.

RG-LCD's LRM is a *latent CLIP*, pretrained before distillation so that the proxy the student
maximises already reads latents. Two stages, one after the other (docs/lrm-pretrain.md):

1. **Contrastive** (``contrastive_steps``): CLIP's symmetric InfoNCE between the LRM's embeddings
   of training latents and of their captions, samples sharing a caption being positives of each
   other (:func:`~rewardkit.proxies.pretrain_losses.multi_positive_info_nce`).
2. **Preference** (``preference_steps``, rewardkit's addition): the Bradley-Terry loss on
   same-prompt pairs of a :class:`~rewardkit.proxies.preference_set.PreferenceSet` ordered by the
   expert RM (``reward``), or of a saved set such as human votes (``preference_set``).

Every proxy parameter trains here; ``trainable`` is kept in the saved config for rg-lcd's online
update. The proxy is called through ``encode_latents`` / ``encode_prompts``, not ``forward``, so
it is not DDP-wrapped and the loop averages its gradients. The output is ``output_dir/proxy``,
rg-lcd's ``pretrained_proxy``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..distributed import broadcast_from_main
from ..errors import ConfigError
from ..files import write_aside
from ..proxies.base import ProxyRewardModel
from ..proxies.factory import PROXY_DIR
from ..proxies.preference_set import (PreferenceSet, build_preference_set, load_for_teacher,
                                      preference_accuracy)
from ..proxies.pretrain_losses import (caption_groups, multi_positive_info_nce, pairwise_agreement,
                                       pairwise_logistic_loss, retrieval_accuracy)
from ..proxies.pretrain_sets import ensure_preference_set, expert_on_latents, first_samples
from ..rewards.base import RewardModel
from ..rewards.build import build_expert
from ..training.loop import TrainingLoop
from .lrm_pretrain_config import LRMPretrainConfig

PREFERENCE_SET_DIR = "preference_set"
HELDOUT_SET_DIR = "heldout_preference_set"
CONTRASTIVE, PREFERENCE = "contrastive", "preference"


def warmup_factor(step_in_stage: int, warmup_steps: int) -> float:
    """LR multiplier of the ``step_in_stage``-th step (1-based) of a stage: linear, then 1."""
    return min(1.0, step_in_stage / warmup_steps) if warmup_steps > 0 else 1.0


class LRMPretrainRecipe(TrainingLoop):
    """Pretrain the latent proxy RM: contrastive (latent, caption) InfoNCE, then expert pairs."""

    name = "lrm-pretrain"
    Config = LRMPretrainConfig
    component_keys = {"reward": ("reward", RewardModel), "proxy": ("proxy", ProxyRewardModel)}
    progress_keys = ("contrastive_loss", "preference_loss", "lr", "step_time")
    wrap_model = False  # called through encode_latents / encode_prompts, not forward

    def __init__(self, config: LRMPretrainConfig, components: dict[str, Any] | None = None) -> None:
        super().__init__(config, components)
        self.config: LRMPretrainConfig = config
        self.preference_set: PreferenceSet | None = None
        self.heldout_set: PreferenceSet | None = None

    @property
    def total_steps(self) -> int:
        """Both stages' steps (or ``max_train_steps``, when smaller)."""
        return self.config.total_steps

    def stage_of(self, step: int) -> str:
        """The stage of optimiser step ``step`` (1-based)."""
        return CONTRASTIVE if step <= self.config.contrastive_steps else PREFERENCE

    # ================================================================ models

    def build_proxy(self) -> ProxyRewardModel:
        """The proxy: from ``pretrained_proxy`` if given, else new, sized for the backbone."""
        from ..proxies.factory import build_proxy

        cfg = self.config
        proxy = self.components.get("proxy")
        if proxy is None:
            proxy = build_proxy(cfg.proxy, cfg.proxy_params, self.backbone, cfg.pretrained_proxy)
        if cfg.contrastive_steps and not all(hasattr(proxy, m) for m in ("encode_latents",
                                                                          "encode_prompts")):
            raise ConfigError(f"proxy '{cfg.proxy}' has no encode_latents/encode_prompts, so it "
                              "cannot train contrastively; set contrastive_steps=0")
        return proxy

    def build_models(self) -> nn.Module:
        """The proxy (every parameter trains here), the same on every process."""
        proxy = self.proxy_model = self.build_proxy().to(self.device)
        broadcast_from_main(proxy)  # an unseeded init differs per rank: start from rank 0's
        return proxy

    def build_optimizer(self, parameters: Any) -> torch.optim.Optimizer:
        """AdamW over every proxy parameter (no weight decay on 1-d ones and ``logit_scale``)."""
        cfg = self.config
        params = list(parameters)
        groups = [{"params": [p for p in params if p.ndim >= 2],
                   "weight_decay": cfg.adam_weight_decay},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.learning_rate,
                                 betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon)

    def build_lr_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        """Each stage warms up linearly over ``lr_warmup_steps``, then holds its own rate."""
        cfg, processes = self.config, self.accelerator.num_processes
        ratio = cfg.preference_learning_rate / cfg.learning_rate

        def factor(epoch: int) -> float:
            step = epoch // processes + 1  # the step about to be taken (the loop's scheduler
            if step <= cfg.contrastive_steps:  # steps once per process per optimiser step)
                return warmup_factor(step, cfg.lr_warmup_steps)
            return ratio * warmup_factor(step - cfg.contrastive_steps, cfg.lr_warmup_steps)

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def after_prepare(self) -> None:
        """The preference sets (built once by the main process, cached in output_dir)."""
        self.preference_sets()
        if self.preference_set is not None:
            self.pairs = self.preference_set.pairs()[:2]
            if self.pairs[0].numel() == 0:
                raise ConfigError("preference set has no pairs with different expert scores; "
                                  "check the reward model (reward) or add candidates")

    def build_reward_model(self) -> Any:
        """The expert RM on this process's device."""
        cfg = self.config
        return build_expert(cfg.reward, cfg.reward_params, device=self.device,
                            mixed_precision=cfg.mixed_precision,
                            given=self.components.get("reward"))

    def preference_sets(self) -> None:
        """Build (main process, once, cached in output_dir) and load the preference sets."""
        cfg = self.config
        wanted = {"preference_set": (PREFERENCE_SET_DIR, cfg.train_shards_path_or_url,
                                     cfg.preference_num_prompts)} \
            if cfg.preference_enabled and not cfg.preference_set else {}
        if cfg.eval_shards_path_or_url:
            wanted["heldout_set"] = (HELDOUT_SET_DIR, cfg.eval_shards_path_or_url,
                                     cfg.eval_num_prompts)
        experts: list[Any] = []  # built on the first set that is not cached, then shared

        def build(spec: str, count: int) -> PreferenceSet:
            if not experts:
                experts.append(expert_on_latents(self.build_reward_model(), self.backbone))
            return self.build_set(experts[0], spec, count)

        def build_missing() -> None:
            # the RM and the sets use RNGs of their own; the training streams stay untouched
            with torch.random.fork_rng(devices=[]):
                for folder, spec, count in wanted.values():
                    if ensure_preference_set(self.output_dir / folder,
                                             self.set_identity(spec, count),
                                             lambda: build(spec, count)):
                        self.print(f"preference set written to {self.output_dir / folder}")

        if wanted:
            self.on_main_process(build_missing)
        for attribute, (folder, _, _) in wanted.items():
            setattr(self, attribute, PreferenceSet.load(self.output_dir / folder))
        if cfg.preference_enabled and cfg.preference_set:
            self.preference_set = load_for_teacher("preference_set", cfg.preference_set,
                                                   self.backbone.text_embed_dim)

    def set_identity(self, spec: str, count: int) -> dict[str, Any]:
        """What a cached preference set must have been built from to be reused (written
        beside it, so a reward server's token is redacted)."""
        from ..secrets import redact

        cfg = self.config
        return {"data": spec, "num_prompts": count, "reward": cfg.reward,
                "reward_params": redact(cfg.reward_params), "teacher": cfg.pretrained_teacher_model,
                "backbone": cfg.backbone, "resolution": cfg.resolution, "seed": cfg.seed or 0,
                "teacher_settings": cfg.preference_teacher_settings,
                "noise_levels": cfg.preference_noise_levels}

    def build_set(self, expert: Any, spec: str, count: int) -> PreferenceSet:
        """Candidates of ``spec``'s first ``count`` samples, scored by ``expert``."""
        cfg = self.config
        seed = cfg.seed or 0
        latents, captions = first_samples(self.backbone, spec, count, resolution=cfg.resolution,
                                          seed=seed, batch_size=cfg.preference_build_batch_size)
        return build_preference_set(
            self.backbone, expert, latents, captions,
            teacher_settings=[(int(s), float(g)) for s, g in cfg.preference_teacher_settings],
            noise_levels=[float(v) for v in cfg.preference_noise_levels], seed=seed,
            batch_size=cfg.preference_build_batch_size,
            progress=lambda message: self.print(f"preference set ({spec}): {message}"))

    # ================================================================ the two stages

    def next_batch(self) -> dict[str, Any]:
        """A training batch in the contrastive stage; none in the preference stage (it trains
        on the saved preference set)."""
        if self.stage_of(self.global_step + 1) == CONTRASTIVE:
            return next(self.batches)
        return {}

    def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The InfoNCE loss (contrastive stage) or the Bradley-Terry loss (preference stage)."""
        step = self.global_step + 1
        stage = self.stage_of(step)
        if stage == PREFERENCE and step == self.config.contrastive_steps + 1:
            self.optimizer.state.clear()  # the preference stage's AdamW starts afresh
        self.proxy_model.requires_grad_(True)  # every parameter, whatever `trainable` says
        self.proxy_model.train()
        if stage == CONTRASTIVE:
            return {"contrastive_loss": self.contrastive_loss(batch)}
        return {"preference_loss": self.preference_loss()}

    def encode_batch(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled latents and prompt embeddings of a batch (no grad, fp32, on the device)."""
        device = self.device
        with torch.no_grad():
            if "latents" in batch:
                latents = batch["latents"].to(device=device, dtype=torch.float32)
            else:
                latents = self.backbone.encode_images(batch["pixel_values"].to(device),
                                                      generator=self.generator).float()
            embeds = self.backbone.proxy_text(self.backbone.encode_prompts(batch["captions"]).float())
        return latents, embeds

    def contrastive_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Multi-positive InfoNCE of the batch's latents against its captions."""
        latents, embeds = self.encode_batch(batch)
        proxy = self.proxy_model
        groups = caption_groups(batch["captions"])
        image, text = proxy.encode_latents(latents), proxy.encode_prompts(embeds)
        scale = proxy.logit_scale_value()
        self.stage_metrics = {"stage": CONTRASTIVE, "logit_scale": scale.detach(),
                              "contrastive_accuracy": retrieval_accuracy(
                                  image.detach(), text.detach(), groups)}
        return multi_positive_info_nce(image, text, scale, groups=groups)

    def preference_loss(self) -> torch.Tensor:
        """Bradley-Terry loss on random expert-ordered pairs of the preference set."""
        cfg, pset = self.config, self.preference_set
        assert pset is not None
        first, second = self.pairs
        chosen = torch.randint(0, first.numel(), (cfg.preference_batch_size,),
                               generator=self.generator)
        a, b = first[chosen], second[chosen]
        rows = torch.cat([a, b])
        device = self.device
        scores = self.proxy_model(pset.latents[rows].to(device),
                                  pset.prompt_embeds[pset.prompt_index[rows]].to(device))
        score_a, score_b = scores.chunk(2)
        scale = self.proxy_model.logit_scale_value()
        self.stage_metrics = {"stage": PREFERENCE, "logit_scale": scale.detach(),
                              "preference_accuracy": pairwise_agreement(
                                  score_a.detach(), score_b.detach(), pset.expert[a],
                                  pset.expert[b])}
        return pairwise_logistic_loss(score_a, score_b, pset.expert[a], pset.expert[b], scale)

    def after_step(self) -> dict[str, Any]:
        """Lock the proxy again (rg-lcd trains only its ``trainable`` layers); the stage's
        metrics."""
        self.proxy_model.freeze()
        self.proxy_model.eval()
        return self.stage_metrics

    # ================================================================ evaluation and output

    def validation_metrics(self) -> dict[str, float]:
        """Held-out pairwise accuracy (and on the training preference set); main process."""
        out: dict[str, float] = {}
        if self.heldout_set is not None:
            out.update(preference_accuracy(self.proxy_model, self.heldout_set))
        if self.preference_set is not None:
            out.update(preference_accuracy(self.proxy_model, self.preference_set,
                                           prefix="proxy_train_accuracy"))
        return out

    def initial_metrics(self) -> dict[str, Any]:
        """The accuracies before training, as the row of stage ``initial``."""
        initial = self.validation_metrics()
        return {"stage": "initial", **initial} if initial else {}

    def validation_due(self, step: int) -> bool:
        """Every ``validation_steps``, and at the end of each stage."""
        return super().validation_due(step) or step in (self.config.contrastive_steps,
                                                        self.total_steps)

    def save_files(self, folder: Path) -> None:
        """The proxy as ``proxy/`` (loadable with rg-lcd's ``pretrained_proxy``)."""
        self.proxy_model.save_pretrained(folder / PROXY_DIR)

    def load_files(self, folder: Path) -> None:
        """On resume, take the rates of this config's schedule (a run continued with other
        stage lengths or rates), not the ones the checkpoint's run would have used next."""
        scheduler = getattr(self.lr_scheduler, "scheduler", self.lr_scheduler)
        scheduler.base_lrs = [self.config.learning_rate] * len(scheduler.base_lrs)
        for group, base, factor in zip(self.optimizer.param_groups, scheduler.base_lrs,
                                       scheduler.lr_lambdas):
            group["lr"] = base * factor(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def save_final(self) -> Path:
        """The proxy as ``output_dir/proxy`` (written aside, renamed into place)."""
        path = self.output_dir / PROXY_DIR
        self.on_main_process(lambda: write_aside(path, self.proxy_model.save_pretrained))
        return path


__all__ = ["LRMPretrainConfig", "LRMPretrainRecipe", "PROXY_DIR", "PREFERENCE_SET_DIR",
           "HELDOUT_SET_DIR"]
