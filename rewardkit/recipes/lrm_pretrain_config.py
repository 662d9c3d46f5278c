"""The typed configuration of the ``lrm-pretrain`` recipe (:mod:`rewardkit.recipes.lrm_pretrain`):
the training loop's keys, some with CLIP's defaults, plus the proxy and the two stages' keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

from ..config import OURS
from ..config import config_field as _f
from ..data.specs import check_data_spec
from ..errors import ConfigError
from ..proxies.preference_set import DEFAULT_NOISE_LEVELS, DEFAULT_TEACHER_SETTINGS, check_saved_set
from ..training.config import TrainingConfig, check_named


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
            check_saved_set("preference_set", self.preference_set, "pass a folder that `rewardkit "
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


__all__ = ["LRMPretrainConfig"]
