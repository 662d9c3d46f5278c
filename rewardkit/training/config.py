"""The keys every training recipe shares (:class:`TrainingConfig`), and the checks they run
before any model loads.

A recipe's own config extends :class:`TrainingConfig` in the recipe's file
(``rewardkit.recipes.lcd_config.LCDConfig``, ``rg-lcd``'s, ...) with the keys of its algorithm
only. Fields are declared with :func:`rewardkit.config.config_field`; every check raises
:class:`rewardkit.errors.ConfigError` naming the offending key.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

from ..config import OURS, REF
from ..config import config_field as _f
from ..errors import ConfigError
from ..models import check_model_location, check_resolution, check_vae_location
from ..recipes.base import RecipeConfig

MIXED_PRECISION = ("no", "fp16", "bf16")
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                 "constant_with_warmup")
REPORT_TO = ("none", "tensorboard", "wandb", "all")

DEFAULT_VALIDATION_PROMPTS = [
    "portrait photo of a girl, photograph, highly detailed face, depth of field, moody light",
    "Self-portrait oil painting, a beautiful cyborg with golden hair, 8k",
    "Astronaut in a jungle, cold color palette, muted colors, detailed, 8k",
    "A photo of beautiful mountain with realistic sunset and blue lake, highly detailed, masterpiece",
]


#: The guard's keys (:mod:`rewardkit.training.guard`), one topic of every training recipe.
#: The clocks ``max_train_minutes`` can be measured with (see :mod:`rewardkit.training.loop`).
TRAIN_TIME_CLOCKS = ("wall", "process")

GUARD_KEYS = ("gold_panel", "gold_panel_params", "guard_fd_metric", "guard_prompts",
              "guard_seeds", "guard_inference_steps", "guard_teacher_steps", "hacking_patience",
              "stop_on_hacking", "keep_best")


@dataclass
class TrainingConfig(RecipeConfig):
    """What every recipe on the training loop (:mod:`rewardkit.training.loop`) is configured
    with: the teacher backbone, the data, the optimiser and its schedule, precision,
    checkpoints, validation cadence and logging. Key names follow diffusers' training scripts."""

    # ---------------------------------------------------------------- models and data
    pretrained_teacher_model: str = field(metadata={
        "help": "Teacher: a hub id or a local diffusers pipeline folder (required)",
        "provenance": REF})
    train_shards_path_or_url: str = field(metadata={
        "help": "Training data: webdataset shards (paths, brace ranges, pipe:), an image+caption "
                "folder or a folder of pre-encoded latent shards (required)", "provenance": REF})
    revision: Optional[str] = _f(None, "Teacher revision on the hub")
    variant: Optional[str] = _f(None, "Teacher weight variant, e.g. fp16")
    output_dir: str = _f("output", "Where checkpoints, validation images, metrics and the final "
                         "model go", OURS)
    backbone: str = _f("stable-diffusion", "Registered backbone that loads the teacher", OURS)
    backbone_params: dict = _f({}, "Extra keyword arguments for the backbone", OURS)
    pretrained_vae_model_name_or_path: Optional[str] = _f(
        None, "A VAE to use instead of the teacher's (hub id or AutoencoderKL folder), e.g. "
        "madebyollin/sdxl-vae-fp16-fix for SDXL in fp16", REF)
    resolution: int = _f(512, "Training image side in pixels")
    center_crop: bool = _f(False, "Center crop instead of random crop")
    random_flip: bool = _f(False, "Random horizontal flips")
    train_batch_size: int = _f(16, "Batch size per process")
    dataloader_num_workers: int = _f(0, "Threads decoding samples (batches do not depend on it)",
                                     OURS)
    dataloader_seed: Optional[int] = _f(None, "Seed of the data order (defaults to seed)", OURS)
    dataloader_prefetch: int = _f(1, "Batches a background thread reads ahead while the step "
                                  "computes (pinned memory on CUDA); 0 reads each batch inside "
                                  "the step (batches do not depend on it)", OURS)

    # ---------------------------------------------------------------- optimisation
    max_train_steps: int = _f(10000, "Optimiser steps to train")
    max_train_minutes: Optional[float] = _f(
        None, "Stop earlier, saving the output as at the last step, once the training steps "
        "(validations and checkpoints not counted) have taken this many minutes; a resume "
        "continues the budget. For equal-time comparisons and time-limited jobs", OURS)
    train_time_clock: str = _f("wall", "The clock of max_train_minutes: wall (elapsed time) or "
                               "process (this process's CPU time, all its threads: fair between "
                               "runs on a machine shared with other work)", OURS)
    learning_rate: float = _f(1e-6, "AdamW learning rate (full fine-tuning)")
    lr_scheduler: str = _f("constant", f"LR schedule: {', '.join(LR_SCHEDULERS)}")
    lr_warmup_steps: int = _f(500, "LR warm-up steps (ignored by 'constant')")
    gradient_accumulation_steps: int = _f(1, "Micro-batches per optimiser step")
    mixed_precision: str = _f("no", "Mixed precision: no, fp16 or bf16 (frozen models run in it)",
                              OURS)
    use_8bit_adam: bool = _f(False, "bitsandbytes AdamW8bit (when installed)")
    adam_beta1: float = _f(0.9, "AdamW beta1")
    adam_beta2: float = _f(0.999, "AdamW beta2")
    adam_weight_decay: float = _f(0.0, "AdamW weight decay")
    adam_epsilon: float = _f(1e-8, "AdamW epsilon")
    max_grad_norm: float = _f(1.0, "Gradient-norm clip")

    # ---------------------------------------------------------------- checkpoints, validation, logs
    checkpointing_steps: int = _f(500, "Save a checkpoint every N optimiser steps (0: never)")
    checkpoints_total_limit: Optional[int] = _f(None, "Keep only the newest K checkpoints")
    resume_from_checkpoint: Optional[str] = _f(None, "'latest', a checkpoint name in output_dir "
                                               "(checkpoint-500) or a checkpoint folder")
    overwrite_output_dir: bool = _f(False, "Remove the run already in output_dir before starting "
                                    "(without it, a fresh run into a used folder is refused)",
                                    OURS)
    validation_steps: int = _f(200, "Validation every N steps (0: never)")
    seed: Optional[int] = _f(None, "Global seed (None: not seeded)")
    report_to: str = _f("tensorboard", "accelerate trackers: none, tensorboard, wandb or all "
                        "(skipped with a notice when not installed)")
    tracker_project_name: str = _f("rewardkit", "Tracker project name", OURS)

    # ---------------------------------------------------------------- the reward-hacking guard
    gold_panel: list[str] = _f([], "Registered RMs the recipe does not train on, scoring fixed "
                               "samples at every validation (the guard; empty: no panel)", OURS)
    gold_panel_params: dict = _f({}, "Keyword arguments per panel RM: {name: {...}}", OURS)
    guard_fd_metric: Optional[str] = _f(None, "Registered distribution metric of the fixed "
                                        "samples against the teacher's (e.g. fid, world-fd)",
                                        OURS)
    guard_prompts: list[str] = _f(list(DEFAULT_VALIDATION_PROMPTS), "Prompts of the guard's "
                                  "fixed samples", OURS)
    guard_seeds: list[int] = _f([0, 1, 2, 3], "Seeds of the guard's fixed samples (per prompt)",
                                OURS)
    guard_inference_steps: int = _f(2, "Sampling steps of the guard's samples", OURS)
    guard_teacher_steps: int = _f(25, "DDIM steps of the teacher's reference samples", OURS)
    hacking_patience: int = _f(3, "Validations in a row with the trained reward up and the gold "
                               "panel down that count as reward hacking", OURS)
    stop_on_hacking: bool = _f(False, "Stop the run (saving its output) when the guard sees "
                               "reward hacking", OURS)
    keep_best: bool = _f(False, "Export the model at its best gold-panel validation to "
                         "output_dir/best", OURS)

    #: Topics of ``rewardkit run RECIPE --help`` for these keys; a recipe's config adds its own
    #: (every key is in exactly one; a test checks it).
    KEY_GROUPS: ClassVar[dict[str, tuple[str, ...]]] = {
        "Model": ("pretrained_teacher_model", "revision", "variant", "backbone", "backbone_params",
                  "pretrained_vae_model_name_or_path", "output_dir", "overwrite_output_dir", "seed"),
        "Data": ("train_shards_path_or_url", "resolution", "center_crop", "random_flip",
                 "train_batch_size", "dataloader_num_workers", "dataloader_seed",
                 "dataloader_prefetch"),
        "Training and optimiser": (
            "max_train_steps", "max_train_minutes", "train_time_clock", "learning_rate",
            "lr_scheduler",
            "lr_warmup_steps", "gradient_accumulation_steps", "use_8bit_adam", "adam_beta1", "adam_beta2",
            "adam_weight_decay", "adam_epsilon", "max_grad_norm"),
        "Precision and distribution": ("mixed_precision",),
        "Checkpoints": ("checkpointing_steps", "checkpoints_total_limit", "resume_from_checkpoint"),
        "Validation and logging": ("validation_steps", "report_to", "tracker_project_name"),
        "Reward-hacking guard": GUARD_KEYS,
    }

    def check_training_data(self) -> None:
        """``train_shards_path_or_url`` names data the loop can read (a recipe reading prompts
        only checks a prompt spec instead)."""
        from ..data.specs import check_data_spec

        check_data_spec("train_shards_path_or_url", self.train_shards_path_or_url)

    def require_positive(self, *keys: str) -> None:
        """Refuse a value of ``keys`` that is zero, negative, NaN or infinite (``None`` passes:
        "not set")."""
        for key in keys:
            value = getattr(self, key)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{key} must be positive and finite, got {value}")

    def require_non_negative(self, *keys: str) -> None:
        """Refuse a value of ``keys`` that is negative, NaN or infinite (``None`` passes: "not
        set")."""
        for key in keys:
            value = getattr(self, key)
            if value is not None and not (value >= 0 and math.isfinite(value)):
                raise ConfigError(f"{key} must be finite and not negative, got {value}")

    def require_finite(self) -> None:
        """Refuse NaN or infinity in any number of the config (a float key, or a number in a
        list key), naming the key: no key means "unbounded" by infinity."""
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            values = value if isinstance(value, (list, tuple)) else [value]
            for item in values:
                if isinstance(item, float) and not math.isfinite(item):
                    raise ConfigError(f"{spec.name} must be a finite number, got {value}")

    def require_folder(self, key: str) -> None:
        """Refuse a set ``key`` that is not an existing folder."""
        value = getattr(self, key)
        if value and not Path(os.path.expanduser(value)).is_dir():
            raise ConfigError(f"{key}: '{value}' is not a folder")

    def validate(self) -> None:
        """Reject bad values of the shared keys, naming the key, before anything is loaded."""
        from .runtime import check_distributed_engine

        self.require_finite()
        check_model_location(self.pretrained_teacher_model, "pretrained_teacher_model")
        if self.pretrained_vae_model_name_or_path:
            check_vae_location(self.pretrained_vae_model_name_or_path)
            if "pretrained_vae_model_name_or_path" in self.backbone_params:
                raise ConfigError("pretrained_vae_model_name_or_path is given twice (also in "
                                  "backbone_params); keep one")
            from ..plugins import get_host

            spec = get_host().get("backbone", self.backbone)
            if "pretrained_vae_model_name_or_path" not in {p.name for p in spec.params}:
                raise ConfigError(f"pretrained_vae_model_name_or_path: backbone '{self.backbone}' "
                                  "takes no separate VAE; drop the key or use a backbone that "
                                  "does (stable-diffusion, stable-diffusion-xl)")
        self.check_training_data()
        self.require_positive("resolution", "train_batch_size", "max_train_steps",
                              "max_train_minutes", "gradient_accumulation_steps")
        _choice("train_time_clock", self.train_time_clock, TRAIN_TIME_CLOCKS)
        check_resolution(self.pretrained_teacher_model, self.resolution)
        check_distributed_engine()
        self.require_non_negative("lr_warmup_steps", "checkpointing_steps",
                                  "dataloader_num_workers", "dataloader_prefetch",
                                  "validation_steps",
                                  "adam_weight_decay", "adam_epsilon")
        self.require_positive("learning_rate", "max_grad_norm")
        for key in ("seed", "dataloader_seed"):  # numpy's and accelerate's seeding range
            value = getattr(self, key)
            if value is not None and not 0 <= value < 2**32:
                raise ConfigError(f"{key} must be in [0, 2**32 - 1], got {value}")
        for key in ("adam_beta1", "adam_beta2"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"{key} must be in [0, 1), got {getattr(self, key)}")
        _choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        _choice("lr_scheduler", self.lr_scheduler, LR_SCHEDULERS)
        _choice("report_to", self.report_to, REPORT_TO)
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise ConfigError(f"checkpoints_total_limit must be at least 1, got "
                              f"{self.checkpoints_total_limit}")
        check_resume_keys(self.resume_from_checkpoint, self.output_dir, self.overwrite_output_dir)
        self.check_guard()

    @property
    def guard_enabled(self) -> bool:
        """True when the reward-hacking guard measures anything (a panel or an FD metric)."""
        return bool(self.gold_panel or self.guard_fd_metric)

    def check_guard(self) -> None:
        """The guard's keys: registered RMs and metric, sizes, and a validation cadence."""
        for name in self.gold_panel:
            check_component("gold_panel", "reward", name, self.gold_panel_params.get(name, {}),
                            "gold_panel_params")
        unknown = set(self.gold_panel_params) - set(self.gold_panel)
        if unknown:
            raise ConfigError(f"gold_panel_params names {sorted(unknown)}, which are not in "
                              f"gold_panel {self.gold_panel}; add them or drop their params")
        if self.guard_fd_metric:
            check_component("guard_fd_metric", "metric", self.guard_fd_metric)
        self.require_positive("guard_inference_steps", "guard_teacher_steps",
                              "hacking_patience")
        if self.guard_enabled and not (self.guard_prompts and self.guard_seeds):
            raise ConfigError("guard_prompts and guard_seeds must not be empty when the guard is "
                              "on (gold_panel or guard_fd_metric)")
        if (self.stop_on_hacking or self.keep_best) and not self.gold_panel:
            raise ConfigError("stop_on_hacking and keep_best judge by the gold panel; set "
                              "gold_panel (registered RMs the recipe does not train on)")
        if self.guard_enabled and not self.validation_steps:
            raise ConfigError("the guard measures at validations; set validation_steps > 0 or "
                              "drop gold_panel and guard_fd_metric")


def check_resume_keys(resume: str | None, output_dir: str, overwrite: bool) -> None:
    """``resume_from_checkpoint`` is 'latest' or an existing checkpoint folder (a path, or a
    name inside ``output_dir``), and is not combined with ``overwrite_output_dir``."""
    if resume and resume != "latest" and not any(
            p.is_dir() for p in (Path(resume).expanduser(), Path(output_dir) / resume)):
        raise ConfigError(f"resume_from_checkpoint: '{resume}' is neither 'latest' nor a "
                          "checkpoint folder (a path, or a name inside output_dir)")
    if resume and overwrite:
        raise ConfigError("resume_from_checkpoint and overwrite_output_dir contradict each "
                          "other (one continues the run in output_dir, the other removes it); "
                          "pass one of them")


def check_component(key: str, kind: str, name: str, params: dict[str, Any] | None = None,
                    params_key: str | None = None, reserved: dict[str, str] | None = None) -> None:
    """Before anything loads: ``name`` (config key ``key``) is a registered ``kind``, and the
    keys of ``params`` (config key ``params_key``) are parameters it takes; ``reserved`` maps
    parameters the recipe sets itself to the config key to use instead."""
    from ..errors import UnknownComponentError
    from ..plugins import get_host

    try:
        spec = get_host().get(kind, name)
    except UnknownComponentError as error:
        raise ConfigError(f"{key}: {error.args[0]}") from None
    for param in params or {}:
        if reserved and param in reserved:
            raise ConfigError(f"{params_key}: '{param}' is set by the recipe; use "
                              f"--{reserved[param]} instead")
    unknown = [p for p in spec.unknown_params(params or {}) if p not in (reserved or {})]
    if unknown:
        takes = sorted({p.name for p in spec.params} - set(reserved or {}))
        raise ConfigError(f"{params_key}: {kind} '{name}' takes no parameter "
                          f"{', '.join(repr(u) for u in unknown)}; "
                          + (f"it takes {', '.join(takes)}" if takes else
                             "it takes no extra parameters"))


def check_named(config: Any, key: str, kind: str, *, loaded_into: str | None = None,
                **reserved: Any) -> None:
    """Validate the component config key ``key`` names (a registered ``kind``, and its
    ``{key}_params``), unless it was passed built; then a set ``loaded_into`` key (weights to
    load into it) is refused, as there is nothing to load them into."""
    from ..recipes.given import is_given

    if not is_given(config, key):
        check_component(key, kind, getattr(config, key), getattr(config, f"{key}_params"),
                        f"{key}_params", **reserved)
    elif loaded_into and getattr(config, loaded_into):
        raise ConfigError(f"{loaded_into}: the {key} was passed built, so there is nothing to "
                          f"load it into; load it yourself (from_pretrained) or pass the {key} "
                          "by name")


def check_reward(config: Any) -> None:
    """``reward`` is given, and registered (unless it was passed built) with its params."""
    if not config.reward:
        raise ConfigError("reward: no reward model given; pass --reward NAME (see `rewardkit "
                          "list reward`)")
    check_named(config, "reward", "reward")


def check_reward_and_proxy(config: Any) -> None:
    """The keys of a recipe maximising a reward directly or through a proxy: ``reward`` is
    given and registered; ``proxy="none"`` takes a differentiable RM and no ``pretrained_proxy``;
    another ``proxy`` is registered (a built RM's or proxy's own attributes are checked when it
    is used)."""
    from ..plugins import get_host
    from ..proxies.factory import NO_PROXY
    from ..rewards.build import not_differentiable
    from ..recipes.given import is_given

    check_reward(config)
    if config.proxy != NO_PROXY:
        check_named(config, "proxy", "proxy", loaded_into="pretrained_proxy")
        return
    if config.pretrained_proxy:
        raise ConfigError("pretrained_proxy is only used with a proxy; set proxy=lrm or drop "
                          "pretrained_proxy")
    if not is_given(config, "reward") and getattr(
            get_host().get("reward", config.reward).factory, "differentiable", True) is False:
        raise ConfigError(not_differentiable(config.reward))


def _choice(key: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ConfigError(f"{key} must be one of {', '.join(options)}, got {value!r}")
