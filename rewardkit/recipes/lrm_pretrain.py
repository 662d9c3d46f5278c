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
2. **Preference** (``preference_steps``, only with ``reward``). A
   :class:`~rewardkit.proxies.preference_set.PreferenceSet` is built once from
   ``preference_num_prompts`` training samples: per prompt the ground truth, teacher DDIM samples
   at several step counts and guidance scales and noised ground truths, each scored once by the
   expert RM (saved to ``output_dir/preference_set``). Each step trains on
   ``preference_batch_size`` random same-prompt pairs with the Bradley-Terry loss
   ``BCE_with_logits(logit_scale * (s_a - s_b), 1[expert_a > expert_b])``, so the LRM starts
   rg-lcd already agreeing with the expert.

Every parameter of the proxy trains here, whatever its ``trainable`` setting; ``trainable`` is
kept in the saved config, because it is what rg-lcd's online update trains. With
``eval_shards_path_or_url`` a held-out set is built the same way (``output_dir/
heldout_preference_set``) and ``proxy_heldout_accuracy*`` (pairwise agreement with the expert)
is logged before training, every ``validation_steps`` and at the end of each stage.

Outputs: ``output_dir/proxy`` (``save_pretrained``; pass it to rg-lcd as
``--pretrained_proxy``), ``config.json``, ``metrics.jsonl`` and ``checkpoint-N`` folders.
Checkpoints hold no pickles: the proxy as safetensors, the optimiser as safetensors + JSON, each
process's generator state (safetensors) and data position (JSON)
(:mod:`rewardkit.training.safe_state`); a resumed run ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping, Optional

import torch

from ..config import load_config
from ..errors import ConfigError
from ..files import replace_path
from ..proxies.base import WEIGHTS_NAME, ProxyRewardModel
from ..proxies.factory import PROXY_DIR, proxy_folder
from ..proxies.preference_set import (DEFAULT_NOISE_LEVELS, DEFAULT_TEACHER_SETTINGS,
                                      PreferenceSet, build_preference_set, preference_accuracy)
from ..proxies.pretrain_losses import (caption_groups, multi_positive_info_nce, pairwise_agreement,
                                       pairwise_logistic_loss, retrieval_accuracy)
from ..proxies.pretrain_sets import ensure_preference_set, expert_on_latents, first_samples
from ..rewards.base import RewardModel
from ..training.checkpoint import (TRAINER_STATE, check_resume_step, resolve_resume, restoring,
                                   save_checkpoint)
from ..config import OURS
from ..config import config_field as _f
from ..training.config import (MIXED_PRECISION, REPORT_TO, check_component, check_resolution,
                               check_resume_keys, check_teacher_location)
from ..data.specs import build_training_loader, check_data_spec
from ..training.errors import TrainingError, naming_out_of_memory
from ..training.metrics import TrainingProgress, start_logging, write_run_config
from ..training.output_dir import check_output_dir, clear_for_overwrite
from ..training.runtime import build_accelerator, weight_dtype
from ..training.safe_state import (load_generator_state, load_json_state, load_optimizer_state,
                                   load_tensor_file, save_generator_state, save_json_state,
                                   save_optimizer_state)
from .base import Recipe, RecipeConfig
from .given import is_given

PREFERENCE_SET_DIR = "preference_set"
HELDOUT_SET_DIR = "heldout_preference_set"
CONTRASTIVE, PREFERENCE = "contrastive", "preference"


@dataclass
class LRMPretrainConfig(RecipeConfig):
    """Pretraining of the latent proxy RM: contrastive on (latent, caption), then expert pairs."""

    # ---------------------------------------------------------------- models and data
    pretrained_teacher_model: str = field(metadata={
        "help": "Backbone whose VAE and text encoder feed the LRM: a hub id or a local diffusers "
                "pipeline folder (required)", "provenance": OURS})
    train_shards_path_or_url: str = field(metadata={
        "help": "Training (image, caption) data: anything lcd reads, incl. world:train "
                "(required)", "provenance": OURS})
    revision: Optional[str] = _f(None, "Teacher revision on the hub", OURS)
    variant: Optional[str] = _f(None, "Teacher weight variant, e.g. fp16", OURS)
    output_dir: str = _f("lrm-pretrained", "Where proxy/, checkpoints and metrics go", OURS)
    backbone: str = _f("stable-diffusion", "Registered backbone that loads the teacher", OURS)
    backbone_params: dict = _f({}, "Extra keyword arguments for the backbone", OURS)
    resolution: int = _f(512, "Training image side in pixels", OURS)
    center_crop: bool = _f(False, "Center crop instead of random crop", OURS)
    random_flip: bool = _f(False, "Random horizontal flips", OURS)
    train_batch_size: int = _f(64, "(latent, caption) pairs per contrastive step and process",
                               OURS)
    dataloader_num_workers: int = _f(0, "Threads decoding samples", OURS)
    dataloader_seed: Optional[int] = _f(None, "Seed of the data order (defaults to seed)", OURS)

    # ---------------------------------------------------------------- the proxy
    proxy: str = _f("lrm", "Registered proxy RM to pretrain", OURS)
    proxy_params: dict = _f({}, "Keyword arguments for the proxy (sizes, trainable: kept in the "
                            "saved config for rg-lcd; all parameters train here)", OURS)
    pretrained_proxy: Optional[str] = _f(None, "Start from a saved proxy (a save_pretrained "
                                         "folder; alias: pretrained_latent_rm)", OURS)

    # ---------------------------------------------------------------- contrastive stage
    contrastive_steps: int = _f(1000, "InfoNCE optimiser steps (0: skip the stage)", OURS)
    learning_rate: float = _f(1e-4, "AdamW learning rate of the contrastive stage", OURS)
    adam_beta1: float = _f(0.9, "AdamW beta1", OURS)
    adam_beta2: float = _f(0.98, "AdamW beta2 (CLIP's)", OURS)
    adam_epsilon: float = _f(1e-6, "AdamW epsilon (CLIP's)", OURS)
    adam_weight_decay: float = _f(0.0, "AdamW weight decay (not on biases, norms, logit_scale)",
                                  OURS)
    lr_warmup_steps: int = _f(100, "Linear LR warm-up steps at the start of each stage", OURS)
    max_grad_norm: float = _f(1.0, "Gradient-norm clip", OURS)

    # ---------------------------------------------------------------- preference stage
    reward: Optional[str] = _f(None, "Expert RM of the preference stage and the held-out "
                               "measurement (none: contrastive only)", OURS)
    reward_params: dict = _f({}, "Keyword arguments for the reward model", OURS)
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
    validation_steps: int = _f(100, "Held-out accuracy every N steps, besides each stage's end "
                               "(0: only there)", OURS)

    # ---------------------------------------------------------------- run
    seed: Optional[int] = _f(0, "Global seed (None: not seeded)", OURS)
    mixed_precision: str = _f("no", "Dtype of the frozen backbone: no, fp16 or bf16 (the LRM "
                              "trains in fp32)", OURS)
    checkpointing_steps: int = _f(500, "Save a checkpoint every N steps (0: never)", OURS)
    checkpoints_total_limit: Optional[int] = _f(None, "Keep only the newest K checkpoints", OURS)
    resume_from_checkpoint: Optional[str] = _f(None, "'latest', a checkpoint name in output_dir "
                                               "(checkpoint-500) or a checkpoint folder", OURS)
    overwrite_output_dir: bool = _f(False, "Remove the run already in output_dir before starting "
                                    "(without it, a fresh run into a used folder is refused)",
                                    OURS)
    report_to: str = _f("tensorboard", "accelerate trackers: none, tensorboard, wandb or all",
                        OURS)
    tracker_project_name: str = _f("rewardkit-lrm-pretrain", "Tracker project name", OURS)

    #: The reference code's flag name, accepted for ``pretrained_proxy``.
    KEY_ALIASES: ClassVar[dict[str, str]] = {"pretrained_latent_rm": "pretrained_proxy"}
    KEY_GROUPS: ClassVar[dict[str, tuple[str, ...]]] = {
        "Model": ("pretrained_teacher_model", "revision", "variant", "backbone", "backbone_params",
                  "output_dir", "overwrite_output_dir", "seed"),
        "Data": ("train_shards_path_or_url", "resolution", "center_crop", "random_flip",
                 "train_batch_size", "dataloader_num_workers", "dataloader_seed"),
        "Proxy": ("proxy", "proxy_params", "pretrained_proxy"),
        "Contrastive stage": ("contrastive_steps", "learning_rate", "adam_beta1", "adam_beta2",
                              "adam_epsilon", "adam_weight_decay", "lr_warmup_steps",
                              "max_grad_norm"),
        "Preference stage": ("reward", "reward_params", "preference_num_prompts",
                             "preference_steps", "preference_batch_size",
                             "preference_learning_rate", "preference_teacher_settings",
                             "preference_noise_levels", "preference_build_batch_size"),
        "Precision and distribution": ("mixed_precision",),
        "Checkpoints": ("checkpointing_steps", "checkpoints_total_limit", "resume_from_checkpoint"),
        "Evaluation and logging": ("eval_shards_path_or_url", "eval_num_prompts",
                                   "validation_steps", "report_to", "tracker_project_name"),
    }

    @property
    def preference_enabled(self) -> bool:
        """True when the preference stage runs (a reward and preference steps)."""
        return bool(self.reward) and self.preference_steps > 0

    @property
    def total_steps(self) -> int:
        """Optimiser steps of both stages."""
        return self.contrastive_steps + (self.preference_steps if self.preference_enabled else 0)

    def validate(self) -> None:
        """Reject bad values, naming the key, before anything is loaded."""
        check_teacher_location(self.pretrained_teacher_model)
        check_data_spec("train_shards_path_or_url", self.train_shards_path_or_url)
        if self.eval_shards_path_or_url:
            check_data_spec("eval_shards_path_or_url", self.eval_shards_path_or_url)
            if not self.reward:
                raise ConfigError("eval_shards_path_or_url needs reward (the expert that scores "
                                  "the held-out candidates)")
        for key in ("resolution", "train_batch_size", "preference_num_prompts",
                    "preference_batch_size", "preference_build_batch_size", "eval_num_prompts"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key} must be positive, got {getattr(self, key)}")
        check_resolution(self.pretrained_teacher_model, self.resolution)
        for key in ("contrastive_steps", "preference_steps", "lr_warmup_steps",
                    "checkpointing_steps", "validation_steps", "dataloader_num_workers",
                    "adam_weight_decay", "adam_epsilon"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must not be negative, got {getattr(self, key)}")
        for key in ("learning_rate", "preference_learning_rate", "max_grad_norm"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key} must be positive, got {getattr(self, key)}")
        for key in ("adam_beta1", "adam_beta2"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"{key} must be in [0, 1), got {getattr(self, key)}")
        if self.contrastive_steps and self.train_batch_size < 2:
            raise ConfigError("train_batch_size must be at least 2 for the contrastive stage (a "
                              f"batch of one has no negatives), got {self.train_batch_size}")
        if self.total_steps == 0:
            raise ConfigError("contrastive_steps is 0 and there is no preference stage (it needs "
                              "reward and preference_steps > 0): nothing to train")
        self._check_candidates()
        for key, value, options in (("mixed_precision", self.mixed_precision, MIXED_PRECISION),
                                    ("report_to", self.report_to, REPORT_TO)):
            if value not in options:
                raise ConfigError(f"{key} must be one of {', '.join(options)}, got {value!r}")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise ConfigError("checkpoints_total_limit must be at least 1, got "
                              f"{self.checkpoints_total_limit}")
        if self.pretrained_proxy and not Path(
                os.path.expanduser(self.pretrained_proxy)).is_dir():
            raise ConfigError(f"pretrained_proxy: '{self.pretrained_proxy}' is not a "
                              "folder")
        check_resume_keys(self.resume_from_checkpoint, self.output_dir, self.overwrite_output_dir)
        self._check_components()

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

    def _check_components(self) -> None:
        if not is_given(self, "proxy"):
            check_component("proxy", "proxy", self.proxy, self.proxy_params, "proxy_params")
        elif self.pretrained_proxy:
            raise ConfigError("pretrained_proxy: the proxy was passed built, so there is "
                              "nothing to load it into; load it yourself (from_pretrained) or "
                              "pass the proxy by name")
        if self.reward and not is_given(self, "reward"):
            check_component("reward", "reward", self.reward, self.reward_params, "reward_params")


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Average gradients over ``torch.distributed`` ranks (a no-op in one process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad.div_(dist.get_world_size())


def warmup_factor(step_in_stage: int, warmup_steps: int) -> float:
    """LR multiplier of the ``step_in_stage``-th step (1-based) of a stage: linear, then 1."""
    return min(1.0, step_in_stage / warmup_steps) if warmup_steps > 0 else 1.0


class LRMPretrainRecipe(Recipe):
    """Pretrain the latent proxy RM: contrastive (latent, caption) InfoNCE, then expert pairs."""

    name = "lrm-pretrain"
    Config = LRMPretrainConfig
    component_keys = {"reward": ("reward", RewardModel), "proxy": ("proxy", ProxyRewardModel)}

    def __init__(self, config: LRMPretrainConfig, components: dict[str, Any] | None = None) -> None:
        super().__init__(config, components)
        self.config: LRMPretrainConfig = config
        self.output_dir = Path(config.output_dir)
        self.global_step = 0
        self.accelerator: Any = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.optimizer_stage: str | None = None
        self.preference_set: PreferenceSet | None = None
        self.heldout_set: PreferenceSet | None = None

    def stage_of(self, step: int) -> str:
        """The stage of optimiser step ``step`` (1-based)."""
        return CONTRASTIVE if step <= self.config.contrastive_steps else PREFERENCE

    # ================================================================ building

    def build_backbone(self, device: torch.device, dtype: torch.dtype) -> Any:
        """The teacher backbone (frozen, on ``device`` in ``dtype``), loaded as ``lcd`` does."""
        from ..plugins import get_host

        cfg = self.config
        return get_host().get("backbone", cfg.backbone).build(
            pretrained_model_name_or_path=cfg.pretrained_teacher_model, revision=cfg.revision,
            variant=cfg.variant, dtype=str(dtype).replace("torch.", ""), device=str(device),
            **cfg.backbone_params)

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

    def build_reward_model(self) -> Any:
        """The expert RM on this process's device."""
        from ..plugins import get_host

        cfg = self.config
        rm = self.components.get("reward")
        if rm is None:
            rm = get_host().get("reward", cfg.reward).build(**cfg.reward_params)
        if not isinstance(rm, RewardModel):
            raise ConfigError(f"reward '{cfg.reward}' built a {type(rm).__name__}, not a "
                              "rewardkit.rewards.RewardModel")
        rm.to(self.accelerator.device)
        return rm

    def build_optimizer(self, stage: str) -> torch.optim.Optimizer:
        """AdamW over every proxy parameter (no weight decay on 1-d ones and ``logit_scale``)."""
        cfg = self.config
        params = list(self.proxy_model.parameters())
        decay = [p for p in params if p.ndim >= 2]
        rest = [p for p in params if p.ndim < 2]
        lr = cfg.learning_rate if stage == CONTRASTIVE else cfg.preference_learning_rate
        groups = [{"params": decay, "weight_decay": cfg.adam_weight_decay},
                  {"params": rest, "weight_decay": 0.0}]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr,
                                 betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon)

    def use_optimizer(self, stage: str) -> torch.optim.Optimizer:
        """The optimiser of ``stage`` (a fresh one when the stage changes)."""
        if self.optimizer is None or self.optimizer_stage != stage:
            self.optimizer, self.optimizer_stage = self.build_optimizer(stage), stage
        return self.optimizer

    def preference_sets(self) -> None:
        """Build (main process, once, cached in output_dir) and load the preference sets."""
        cfg, acc = self.config, self.accelerator
        wanted = []
        if cfg.preference_enabled:
            wanted.append(("preference_set", PREFERENCE_SET_DIR, cfg.train_shards_path_or_url,
                           cfg.preference_num_prompts))
        if cfg.eval_shards_path_or_url:
            wanted.append(("heldout_set", HELDOUT_SET_DIR, cfg.eval_shards_path_or_url,
                           cfg.eval_num_prompts))
        if not wanted:
            return
        if acc.is_main_process:
            # the RM and the sets use RNGs of their own; the training streams stay untouched
            with torch.random.fork_rng(devices=[]):
                expert = None
                for _, folder, spec, count in wanted:
                    def build(spec: str = spec, count: int = count) -> PreferenceSet:
                        nonlocal expert
                        if expert is None:
                            expert = expert_on_latents(self.build_reward_model(), self.backbone)
                        return self.build_set(expert, spec, count)
                    if ensure_preference_set(self.output_dir / folder,
                                             self.set_identity(spec, count), build):
                        acc.print(f"preference set written to {self.output_dir / folder}")
                del expert
        acc.wait_for_everyone()
        for attribute, folder, _, _ in wanted:
            setattr(self, attribute, PreferenceSet.load(self.output_dir / folder))

    def set_identity(self, spec: str, count: int) -> dict[str, Any]:
        """What a cached preference set must have been built from to be reused."""
        cfg = self.config
        return {"data": spec, "num_prompts": count, "reward": cfg.reward,
                "reward_params": cfg.reward_params, "teacher": cfg.pretrained_teacher_model,
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
            progress=lambda message: self.accelerator.print(f"preference set ({spec}): {message}"))

    # ================================================================ setup

    def setup(self) -> None:
        """Accelerator, backbone, proxy, data, preference sets; resume if asked. Idempotent."""
        if self.accelerator is not None:
            return
        from accelerate.utils import set_seed

        cfg = self.config
        check_output_dir(self.output_dir, cfg.resume_from_checkpoint, cfg.overwrite_output_dir)
        acc = self.accelerator = build_accelerator(
            output_dir=self.output_dir, mixed_precision=cfg.mixed_precision,
            gradient_accumulation_steps=1, report_to=cfg.report_to,
            train_batch_size=cfg.train_batch_size, max_grad_norm=cfg.max_grad_norm)
        if cfg.seed is not None:
            set_seed(cfg.seed)
        clear_for_overwrite(acc, self.output_dir, cfg.overwrite_output_dir)

        self.backbone = self.build_backbone(acc.device, weight_dtype(cfg.mixed_precision))
        self.backbone.configure(resolution=cfg.resolution)
        proxy = self.proxy_model = self.build_proxy().to(acc.device)
        if acc.num_processes > 1:  # an unseeded init differs per rank: start from rank 0's
            import torch.distributed as dist

            for tensor in proxy.state_dict().values():
                dist.broadcast(tensor, src=0)
        data_seed = cfg.dataloader_seed if cfg.dataloader_seed is not None else (cfg.seed or 0)
        self.loader = build_training_loader(
            cfg.train_shards_path_or_url, resolution=cfg.resolution,
            batch_size=cfg.train_batch_size, seed=data_seed, rank=acc.process_index,
            world_size=acc.num_processes, center_crop=cfg.center_crop,
            random_flip=cfg.random_flip, num_workers=cfg.dataloader_num_workers,
            vae_scaling_factor=self.backbone.vae_scaling_factor)
        base_seed = cfg.seed if cfg.seed is not None else torch.initial_seed()
        self.generator = torch.Generator().manual_seed(
            (base_seed * 1_000_003 + acc.process_index) % 2**63)
        self.preference_sets()
        if self.preference_set is not None:
            self.pairs = self.preference_set.pairs()[:2]
            if self.pairs[0].numel() == 0:
                raise ConfigError("preference set has no pairs with different expert scores; "
                                  "check the reward model (reward) or add candidates")

        checkpoint = self.resolve_checkpoint()
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)
        elif cfg.resume_from_checkpoint:
            acc.print(f"resume_from_checkpoint={cfg.resume_from_checkpoint}: no checkpoint in "
                      f"{self.output_dir}; starting a new run")
        self.batches: Iterator[dict[str, Any]] = iter(self.loader)
        write_run_config(acc, cfg, self.output_dir)  # every check has passed
        self.metrics_log = start_logging(acc, cfg, self.output_dir, self.global_step)

    # ================================================================ the steps

    def optimise(self, loss: torch.Tensor, name: str, stage: str) -> float:
        """Backward, average over ranks, clip, one AdamW step at this stage's LR; returns it."""
        cfg = self.config
        if not torch.isfinite(loss.detach()).all():
            raise TrainingError(f"step {self.global_step + 1}: {name} is not finite "
                                f"({float(loss.detach())}); stopping with the checkpoints "
                                "written so far intact")
        optimizer = self.use_optimizer(stage)
        step_in_stage = (self.global_step + 1 if stage == CONTRASTIVE
                         else self.global_step + 1 - cfg.contrastive_steps)
        base = cfg.learning_rate if stage == CONTRASTIVE else cfg.preference_learning_rate
        lr = base * warmup_factor(step_in_stage, cfg.lr_warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = list(self.proxy_model.parameters())
        average_gradients(params)
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return lr

    def encode_batch(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled latents and prompt embeddings of a batch (no grad, fp32, on the device)."""
        device = self.accelerator.device
        with torch.no_grad():
            if "latents" in batch:
                latents = batch["latents"].to(device=device, dtype=torch.float32)
            else:
                latents = self.backbone.encode_images(batch["pixel_values"].to(device),
                                                      generator=self.generator).float()
            embeds = self.backbone.proxy_text(self.backbone.encode_prompts(batch["captions"]).float())
        return latents, embeds

    def contrastive_step(self) -> dict[str, Any]:
        """One multi-positive InfoNCE step on the next training batch."""
        batch = next(self.batches)
        latents, embeds = self.encode_batch(batch)
        proxy = self.proxy_model
        groups = caption_groups(batch["captions"])
        image, text = proxy.encode_latents(latents), proxy.encode_prompts(embeds)
        scale = proxy.logit_scale_value()
        loss = multi_positive_info_nce(image, text, scale, groups=groups)
        lr = self.optimise(loss, "contrastive_loss", CONTRASTIVE)
        return {"stage": CONTRASTIVE, "contrastive_loss": float(loss.detach()), "lr": lr,
                "contrastive_accuracy": float(retrieval_accuracy(image.detach(), text.detach(),
                                                                 groups)),
                "logit_scale": float(scale.detach())}

    def preference_step(self) -> dict[str, Any]:
        """One Bradley-Terry step on random expert-ordered pairs of the preference set."""
        cfg, pset = self.config, self.preference_set
        assert pset is not None
        first, second = self.pairs
        chosen = torch.randint(0, first.numel(), (cfg.preference_batch_size,),
                               generator=self.generator)
        a, b = first[chosen], second[chosen]
        rows = torch.cat([a, b])
        device = self.accelerator.device
        scores = self.proxy_model(pset.latents[rows].to(device),
                                  pset.prompt_embeds[pset.prompt_index[rows]].to(device))
        score_a, score_b = scores.chunk(2)
        scale = self.proxy_model.logit_scale_value()
        loss = pairwise_logistic_loss(score_a, score_b, pset.expert[a], pset.expert[b], scale)
        lr = self.optimise(loss, "preference_loss", PREFERENCE)
        return {"stage": PREFERENCE, "preference_loss": float(loss.detach()), "lr": lr,
                "preference_accuracy": float(pairwise_agreement(
                    score_a.detach(), score_b.detach(), pset.expert[a], pset.expert[b])),
                "logit_scale": float(scale.detach())}

    def train_step(self) -> dict[str, Any]:
        """The next optimiser step of whichever stage it belongs to; its metrics."""
        proxy = self.proxy_model
        proxy.requires_grad_(True)  # every parameter, whatever `trainable` says
        proxy.train()
        try:
            if self.stage_of(self.global_step + 1) == CONTRASTIVE:
                metrics = self.contrastive_step()
            else:
                metrics = self.preference_step()
        finally:
            proxy.freeze()
            proxy.eval()
        return self._mean_over_processes(metrics)

    def _mean_over_processes(self, metrics: dict[str, Any]) -> dict[str, Any]:
        acc = self.accelerator
        names = sorted(k for k, v in metrics.items() if isinstance(v, float) and k != "lr")
        if acc.num_processes == 1 or not names:
            return metrics
        values = acc.reduce(torch.tensor([metrics[n] for n in names], device=acc.device),
                            reduction="mean")
        return {**metrics, **dict(zip(names, values.tolist()))}

    def evaluate(self) -> dict[str, float]:
        """Held-out pairwise accuracy (and on the training preference set); main process."""
        out: dict[str, float] = {}
        if self.heldout_set is not None:
            out.update(preference_accuracy(self.proxy_model, self.heldout_set))
        if self.preference_set is not None:
            out.update(preference_accuracy(self.proxy_model, self.preference_set,
                                           prefix="proxy_train_accuracy"))
        return out

    # ================================================================ checkpoints

    def resolve_checkpoint(self) -> Path | None:
        """The folder ``resume_from_checkpoint`` names (``None``: start a new run)."""
        return resolve_resume(self.config.resume_from_checkpoint, self.output_dir)

    def save_checkpoint(self) -> Path:
        """Write ``checkpoint-{step}`` atomically, without pickles (every process calls this)."""
        acc = self.accelerator
        rank = acc.process_index

        def rank_files(folder: Path) -> None:
            save_generator_state(self.generator, folder / f"generator_{rank}.safetensors")
            save_json_state(self.loader.state_dict(), folder / f"loader_{rank}.json")

        def main_files(folder: Path) -> None:
            self.proxy_model.save_pretrained(folder / PROXY_DIR)
            if self.optimizer is not None:
                save_optimizer_state(self.optimizer, folder)

        return save_checkpoint(acc, self.output_dir, self.global_step, rank_files, main_files,
                               {"world_size": acc.num_processes,
                                "stage": self.stage_of(self.global_step),
                                "optimizer_stage": self.optimizer_stage},
                               total_limit=self.config.checkpoints_total_limit,
                               accelerate_state=False)

    def load_checkpoint(self, checkpoint: Path) -> None:
        """Restore proxy, optimiser (if the next step is in its stage), RNG and data position."""
        acc, rank = self.accelerator, self.accelerator.process_index
        with restoring(checkpoint):  # an unreadable file's error names an earlier checkpoint
            state = load_json_state(checkpoint / TRAINER_STATE)
            weights = proxy_folder(checkpoint) / WEIGHTS_NAME
            try:
                self.proxy_model.load_state_dict(load_tensor_file(weights))
            except RuntimeError as error:
                raise ConfigError(f"'{weights}' does not fit the configured proxy "
                                  f"({error})") from None
            load_generator_state(self.generator, checkpoint / f"generator_{rank}.safetensors")
            self.loader.load_state_dict(load_json_state(checkpoint / f"loader_{rank}.json"))
            self.global_step = int(state["global_step"])
            check_resume_step(checkpoint, self.global_step, self.config.total_steps,
                              "contrastive_steps + preference_steps")
            stage = state.get("optimizer_stage")
            if stage is not None and stage == self.stage_of(self.global_step + 1):
                load_optimizer_state(self.use_optimizer(stage), checkpoint)
        acc.print(f"resumed from {checkpoint} at step {self.global_step}")

    # ================================================================ the run

    def log(self, metrics: dict[str, Any]) -> None:
        """metrics.jsonl and the accelerate trackers (main process)."""
        acc = self.accelerator
        if acc.is_main_process:
            self.metrics_log.append(self.global_step, metrics)
            if acc.log_with:
                acc.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                        step=self.global_step)

    def save_final(self) -> Path:
        """The proxy as ``output_dir/proxy`` (written aside, renamed into place)."""
        path = self.output_dir / PROXY_DIR
        if self.accelerator.is_main_process:
            tmp = self.output_dir / f".{PROXY_DIR}.tmp"
            if tmp.exists():
                shutil.rmtree(tmp)
            self.proxy_model.save_pretrained(tmp)
            replace_path(tmp, path)
        self.accelerator.wait_for_everyone()
        return path

    def run(self, progress: bool = True) -> Path:
        """Both stages (resuming if asked), then ``proxy/``; returns ``output_dir``."""
        self.setup()
        cfg, acc = self.config, self.accelerator
        total = cfg.total_steps
        if self.global_step == 0 and acc.is_main_process:
            initial = self.evaluate()
            if initial:
                self.log({"stage": "initial", **initial})
        with TrainingProgress(total, min(self.global_step, total),
                              enabled=progress and acc.is_main_process,
                              keys=("contrastive_loss", "preference_loss", "lr",
                                    "step_time")) as bar:
            while self.global_step < total:
                started = time.perf_counter()
                with naming_out_of_memory(self.global_step + 1, cfg):
                    metrics = self.train_step()
                self.global_step += 1
                metrics["step_time"] = time.perf_counter() - started
                bar.update(self.global_step, metrics)
                stage_end = self.global_step in (cfg.contrastive_steps, total)
                due = cfg.validation_steps and self.global_step % cfg.validation_steps == 0
                if (stage_end or due) and acc.is_main_process:
                    metrics.update(self.evaluate())
                self.log(metrics)  # before the checkpoint: a resumed run keeps this row
                if cfg.checkpointing_steps and self.global_step % cfg.checkpointing_steps == 0:
                    self.save_checkpoint()
        self.save_final()
        acc.end_training()
        return self.output_dir


def pretrain_lrm(config: str | Path | Mapping[str, Any] | None = None, *, progress: bool = False,
                 **overrides: Any) -> Path:
    """Run ``lrm-pretrain`` from a config (file or mapping) plus overrides; return the saved
    proxy folder (``output_dir/proxy``, for rg-lcd's ``pretrained_proxy``)."""
    path = None
    if isinstance(config, Mapping):
        overrides = {**config, **overrides}
    else:
        path = config
    recipe = LRMPretrainRecipe(load_config(LRMPretrainConfig, path, overrides))
    return recipe.run(progress=progress) / PROXY_DIR


__all__ = ["LRMPretrainConfig", "LRMPretrainRecipe", "pretrain_lrm", "PROXY_DIR",
           "PREFERENCE_SET_DIR", "HELDOUT_SET_DIR"]
