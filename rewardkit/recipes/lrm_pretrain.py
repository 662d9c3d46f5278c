"""The ``lrm-pretrain`` recipe: pretrain the latent proxy RM (LRM) before reward-guided LCD.

RG-LCD's LRM is a *latent CLIP*: the paper pretrains it contrastively on (latent, caption) pairs
before distillation starts, so that the proxy the student maximises already reads latents. This
recipe does that, and optionally a second stage that is rewardkit's addition:

1. **Contrastive** (``contrastive_steps`` optimiser steps). Batches of training (image, caption)
   pairs become scaled latents (the teacher's VAE, or pre-encoded ``latents``) and frozen prompt
   embeddings (the teacher's text encoder); the loss is CLIP's symmetric InfoNCE on the LRM's
   unit-norm embeddings with its learned ``logit_scale``, with *multi-positive* targets: samples
   sharing a caption are positives of each other, never negatives
   (:func:`~rewardkit.proxies.pretrain_losses.multi_positive_info_nce`). Negatives come from
   this process's batch.
2. **Preference** (``preference_steps``, with ``reward`` or ``preference_set``). A
   :class:`~rewardkit.proxies.preference_set.PreferenceSet` is built once from
   ``preference_num_prompts`` training samples: per prompt the ground truth, teacher DDIM samples
   at several step counts and guidance scales and noised ground truths, each scored once by the
   expert RM (saved to ``output_dir/preference_set``). Each step trains on
   ``preference_batch_size`` random same-prompt pairs with the Bradley-Terry loss
   ``BCE_with_logits(logit_scale * (s_a - s_b), 1[expert_a > expert_b])``, so the LRM starts
   rg-lcd already agreeing with the expert. With ``preference_set`` (a saved set, e.g. human
   votes from ``rewardkit vote export``) the stage trains on that set instead, and needs no
   ``reward``.

Every parameter of the proxy trains here, whatever its ``trainable`` setting; ``trainable`` is
kept in the saved config, because it is what rg-lcd's online update trains. With
``eval_shards_path_or_url`` a held-out set is built the same way (``output_dir/
heldout_preference_set``) and ``proxy_heldout_accuracy*`` (pairwise agreement with the expert)
is logged before training, every ``validation_steps`` and at the end of each stage.

It runs on the training loop (:mod:`rewardkit.training.loop`): this file is the two stages'
losses, their optimiser (AdamW, no decay on 1-d parameters; its state starts afresh with the
preference stage) and LR schedule (linear warm-up over ``lr_warmup_steps`` at the start of each
stage, then each stage's rate). The proxy is called through ``encode_latents`` /
``encode_prompts``, not ``forward``, so it is not DDP-wrapped: the loop averages its gradients.

Outputs: ``output_dir/proxy`` (``save_pretrained``; pass it to rg-lcd as
``--pretrained_proxy``), ``config.json``, ``metrics.jsonl`` and ``checkpoint-N`` folders (the
loop's, without pickles, plus the proxy as ``proxy/``); a resumed run ends bit-identical to an
uninterrupted one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

import torch
from torch import nn

from ..config import OURS
from ..config import config_field as _f
from ..distributed import broadcast_from_main
from ..errors import ConfigError
from ..files import write_aside
from ..proxies.base import ProxyRewardModel
from ..proxies.factory import PROXY_DIR
from ..proxies.preference_set import (DEFAULT_NOISE_LEVELS, DEFAULT_TEACHER_SETTINGS, SET_META,
                                      PreferenceSet, build_preference_set, preference_accuracy)
from ..proxies.pretrain_losses import (caption_groups, multi_positive_info_nce, pairwise_agreement,
                                       pairwise_logistic_loss, retrieval_accuracy)
from ..proxies.pretrain_sets import ensure_preference_set, expert_on_latents, first_samples
from ..data.specs import check_data_spec
from ..rewards.base import RewardModel
from ..rewards.build import build_expert
from ..training.config import TrainingConfig, check_named
from ..training.loop import TrainingLoop

PREFERENCE_SET_DIR = "preference_set"
HELDOUT_SET_DIR = "heldout_preference_set"
CONTRASTIVE, PREFERENCE = "contrastive", "preference"


@dataclass
class LRMPretrainConfig(TrainingConfig):
    """Pretraining of the latent proxy RM: contrastive on (latent, caption), then expert pairs.
    The training loop's keys (:class:`~rewardkit.training.config.TrainingConfig`), some with
    defaults of their own here (CLIP's optimiser settings), plus the stages' keys."""

    pretrained_teacher_model: str = field(metadata={
        "help": "Backbone whose VAE and text encoder feed the LRM: a hub id or a local diffusers "
                "pipeline folder (required)", "provenance": OURS})
    output_dir: str = _f("lrm-pretrained", "Where proxy/, checkpoints and metrics go", OURS)
    train_batch_size: int = _f(64, "(latent, caption) pairs per contrastive step and process",
                               OURS)
    max_train_steps: Optional[int] = _f(None, "Stop after this many optimiser steps (None: "
                                        "contrastive_steps + preference_steps)", OURS)
    learning_rate: float = _f(1e-4, "AdamW learning rate of the contrastive stage", OURS)
    adam_beta2: float = _f(0.98, "AdamW beta2 (CLIP's)", OURS)
    adam_epsilon: float = _f(1e-6, "AdamW epsilon (CLIP's)", OURS)
    adam_weight_decay: float = _f(0.0, "AdamW weight decay (not on biases, norms, logit_scale)",
                                  OURS)
    lr_scheduler: str = _f("constant", "After each stage's warm-up the rate is constant (the "
                           "only schedule lrm-pretrain takes)", OURS)
    lr_warmup_steps: int = _f(100, "Linear LR warm-up steps at the start of each stage", OURS)
    mixed_precision: str = _f("no", "Dtype of the frozen backbone: no, fp16 or bf16 (the LRM "
                              "trains in fp32)", OURS)
    validation_steps: int = _f(100, "Held-out accuracy every N steps, besides each stage's end "
                               "(0: only there)", OURS)
    seed: Optional[int] = _f(0, "Global seed (None: not seeded)", OURS)
    tracker_project_name: str = _f("rewardkit-lrm-pretrain", "Tracker project name", OURS)

    # ---------------------------------------------------------------- the proxy
    proxy: str = _f("lrm", "Registered proxy RM to pretrain", OURS)
    proxy_params: dict = _f({}, "Keyword arguments for the proxy (sizes, trainable: kept in the "
                            "saved config for rg-lcd; all parameters train here)", OURS)
    pretrained_proxy: Optional[str] = _f(None, "Start from a saved proxy (a save_pretrained "
                                         "folder; alias: pretrained_latent_rm)", OURS)

    # ---------------------------------------------------------------- contrastive stage
    contrastive_steps: int = _f(1000, "InfoNCE optimiser steps (0: skip the stage)", OURS)
    # ---------------------------------------------------------------- preference stage
    reward: Optional[str] = _f(None, "Expert RM of the preference stage and the held-out "
                               "measurement (none: contrastive only)", OURS)
    reward_params: dict = _f({}, "Keyword arguments for the reward model", OURS)
    preference_set: Optional[str] = _f(None, "A saved preference set the preference stage trains "
                                       "on instead of one built with reward (e.g. human votes: "
                                       "rewardkit vote export)", OURS)
    preference_num_prompts: int = _f(64, "Training prompts that get scored candidates", OURS)
    preference_steps: int = _f(500, "Pairwise (Bradley-Terry) optimiser steps (needs reward)",
                               OURS)
    preference_batch_size: int = _f(64, "Random expert-ordered pairs per preference step", OURS)
    preference_learning_rate: float = _f(1e-5, "AdamW learning rate of the preference stage",
                                         OURS)
    preference_teacher_settings: list = _f([list(s) for s in DEFAULT_TEACHER_SETTINGS],
                                           "Teacher DDIM candidates per prompt, as [steps, "
                                           "guidance scale] pairs", OURS)
    preference_noise_levels: list[float] = _f(list(DEFAULT_NOISE_LEVELS), "Noise std of the "
                                              "noised ground-truth candidates", OURS)
    preference_build_batch_size: int = _f(16, "Latents sampled, decoded and scored per chunk "
                                          "when building a preference set", OURS)

    # ---------------------------------------------------------------- held-out measurement
    eval_shards_path_or_url: Optional[str] = _f(None, "Held-out data (e.g. world:validation) for "
                                                "proxy_heldout_accuracy (needs reward)", OURS)
    eval_num_prompts: int = _f(32, "Held-out prompts that get scored candidates", OURS)

    #: The reference code's flag name, accepted for ``pretrained_proxy``.
    KEY_ALIASES: ClassVar[dict[str, str]] = {"pretrained_latent_rm": "pretrained_proxy"}
    KEY_GROUPS: ClassVar[dict[str, tuple[str, ...]]] = {
        "Model": TrainingConfig.KEY_GROUPS["Model"],
        "Data": TrainingConfig.KEY_GROUPS["Data"],
        "Proxy": ("proxy", "proxy_params", "pretrained_proxy"),
        "Contrastive stage": ("contrastive_steps", "max_train_steps", "max_train_minutes",
                              "train_time_clock", "learning_rate",
                              "lr_scheduler", "lr_warmup_steps", "gradient_accumulation_steps",
                              "use_8bit_adam", "adam_beta1", "adam_beta2", "adam_epsilon",
                              "adam_weight_decay", "max_grad_norm"),
        "Preference stage": ("reward", "reward_params", "preference_set", "preference_num_prompts",
                             "preference_steps", "preference_batch_size",
                             "preference_learning_rate", "preference_teacher_settings",
                             "preference_noise_levels", "preference_build_batch_size"),
        "Precision and distribution": ("mixed_precision",),
        "Checkpoints": TrainingConfig.KEY_GROUPS["Checkpoints"],
        "Evaluation and logging": ("eval_shards_path_or_url", "eval_num_prompts",
                                   "validation_steps", "report_to", "tracker_project_name"),
        "Reward-hacking guard": TrainingConfig.KEY_GROUPS["Reward-hacking guard"],
    }

    @property
    def preference_enabled(self) -> bool:
        """True when the preference stage runs (a reward or a given preference set, and
        preference steps)."""
        return bool(self.reward or self.preference_set) and self.preference_steps > 0

    @property
    def total_steps(self) -> int:
        """Optimiser steps of the run: both stages, or ``max_train_steps`` when it is smaller."""
        both = self.contrastive_steps + (self.preference_steps if self.preference_enabled else 0)
        return both if self.max_train_steps is None else min(both, self.max_train_steps)

    def validate(self) -> None:
        """The shared checks, then the stages', naming the key, before anything is loaded."""
        super().validate()
        if self.eval_shards_path_or_url:
            check_data_spec("eval_shards_path_or_url", self.eval_shards_path_or_url)
            if not self.reward:
                raise ConfigError("eval_shards_path_or_url needs reward (the expert that scores "
                                  "the held-out candidates)")
        self.require_positive("preference_num_prompts", "preference_batch_size",
                              "preference_build_batch_size", "eval_num_prompts",
                              "preference_learning_rate")
        self.require_non_negative("contrastive_steps", "preference_steps")
        if self.lr_scheduler != "constant":
            raise ConfigError(f"lr_scheduler: lrm-pretrain warms each stage up over "
                              f"lr_warmup_steps and then holds its rate; it takes 'constant' "
                              f"only, got {self.lr_scheduler!r}")
        if self.contrastive_steps and self.train_batch_size < 2:
            raise ConfigError("train_batch_size must be at least 2 for the contrastive stage (a "
                              f"batch of one has no negatives), got {self.train_batch_size}")
        if self.total_steps == 0:
            raise ConfigError("contrastive_steps is 0 and there is no preference stage (it needs "
                              "reward or preference_set, and preference_steps > 0): nothing to "
                              "train")
        if self.preference_set is not None:
            folder = Path(os.path.expanduser(self.preference_set))
            if not (folder / SET_META).is_file():
                raise ConfigError(f"preference_set: '{self.preference_set}' holds no saved "
                                  f"preference set ({SET_META}); pass a folder that `rewardkit "
                                  "vote export` or lrm-pretrain (output_dir/preference_set) wrote")
        self._check_candidates()
        self.require_folder("pretrained_proxy")
        check_named(self, "proxy", "proxy", loaded_into="pretrained_proxy")
        if self.reward:
            check_named(self, "reward", "reward")

    def _check_candidates(self) -> None:
        for setting in self.preference_teacher_settings:
            if (not isinstance(setting, (list, tuple)) or len(setting) != 2
                    or not isinstance(setting[0], int) or setting[0] < 1
                    or not isinstance(setting[1], (int, float))):
                raise ConfigError("preference_teacher_settings must be [steps, guidance scale] "
                                  f"pairs with steps >= 1, got {setting!r}")
        if any(level <= 0 for level in self.preference_noise_levels):
            raise ConfigError("preference_noise_levels must be positive, got "
                              f"{self.preference_noise_levels}")


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
            self.preference_set = self.given_preference_set()

    def given_preference_set(self) -> PreferenceSet:
        """The ``preference_set`` the user gave, checked against the teacher's text width."""
        cfg = self.config
        pset = PreferenceSet.load(os.path.expanduser(cfg.preference_set))
        width = self.backbone.text_embed_dim
        if pset.prompt_embeds.shape[-1] != width:
            raise ConfigError(f"preference_set: its prompt embeddings are "
                              f"{pset.prompt_embeds.shape[-1]}-wide but the teacher's are {width}; "
                              "export it with this teacher (rewardkit vote export --teacher)")
        return pset

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
