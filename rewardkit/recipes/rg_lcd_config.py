"""The typed configuration of the ``rg-lcd`` recipe (:mod:`rewardkit.recipes.rg_lcd`): the
``lcd`` keys plus the reward model, the latent proxy RM (LRM) and its online schedule, and the
held-out set the LRM is measured on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..config import OURS
from ..config import config_field as _f
from ..errors import ConfigError
from ..proxies.factory import NO_PROXY
from ..proxies.losses import PROXY_LOSS_TYPES
from ..proxies.preference_set import check_saved_set
from ..training.config import check_reward_and_proxy
from .lcd_config import LCDConfig


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
    proxy_batch_size: int = _f(16, "Prompts per proxy update (3 candidates each; alias: the "
                               "reference's rm_batch_size)")
    proxy_lr: float = _f(3.3e-6, "Learning rate of the proxy's AdamW (alias: rm_lr)")
    proxy_loss_type: str = _f("distillation", "Proxy loss: distillation (KL to the expert's "
                              "pairwise softmax) or cross_entropy (pairwise winner, gt wins); "
                              "alias: latent_rm_loss_type")
    smooth_gt_label: bool = _f(False, "In gt pairs the expert gives to the generated sample, "
                               "target (0.5, 0.5)")
    pretrained_proxy: Optional[str] = _f(None, "Start the proxy from a saved one (a folder "
                                         "written by save_pretrained, e.g. a checkpoint's "
                                         "proxy/; alias: pretrained_latent_rm)")
    report: bool = _f(False, "After training, let the preset that serves rg-lcd write its report "
                      "(the embedded world's: teacher and student evaluated, report.md, "
                      "comparison.png, training curves; the default world run turns it on)", OURS)
    vae_decode_batch_size: int = _f(16, "Latents decoded (and scored) per chunk in the proxy "
                                    "update")
    vae_gradient_checkpointing: bool = _f(False, "Recompute the VAE decoder's activations in "
                                          "backward (direct mode decodes f_theta with its graph, "
                                          "its largest activation at 512-1024 px); same loss and "
                                          "gradient", OURS)
    # ---------------------------------------------------------------- the online proxy schedule
    proxy_warmup_steps: int = _f(0, "Student steps at the start with the reward term off while "
                                 "the proxy already learns from the expert (0: the reward acts "
                                 "from step 1, as in the paper)", OURS)
    proxy_updates_per_step: int = _f(1, "Proxy optimiser steps after each student step: the "
                                     "first on the fresh candidates, the others on triples drawn "
                                     "from the replay buffer (or the fresh ones again without "
                                     "one); 1 is the paper", OURS)
    proxy_update_every: int = _f(1, "Judge candidates and update the proxy after every N-th "
                                 "student step only, warm-up steps included (1: every step, the "
                                 "paper); the expert's decode and scoring are skipped in "
                                 "between, and so are the proxy metrics", OURS)
    proxy_replay_size: int = _f(0, "Expert-judged candidate triples kept for the extra proxy "
                                "updates (0: no buffer, the paper)", OURS)
    expert_logit_scale: Optional[float] = _f(None, "Score-to-logit multiplier of an expert RM "
                                             "that has no logit scale of its own (None: the "
                                             "proxy's own exp(logit_scale), as the reference "
                                             "code does)", OURS)
    proxy_rehearsal_set: Optional[str] = _f(None, "A saved preference set (e.g. lrm-pretrain's "
                                            "output_dir/preference_set) whose expert-ordered "
                                            "pairs are rehearsed in every proxy update (None: "
                                            "none, the paper)", OURS)
    proxy_rehearsal_batch_size: int = _f(64, "Rehearsal pairs per proxy update", OURS)
    proxy_rehearsal_weight: float = _f(1.0, "Weight of the rehearsal loss in the proxy update",
                                       OURS)
    # ---------------------------------------------------------------- held-out proxy evidence
    proxy_eval_shards_path_or_url: Optional[str] = _f(
        None, "Data of the held-out preference set the proxy is measured on (never trained on): "
        "any training-data spec; None: the training data read with proxy_eval_seed", OURS)
    proxy_eval_num_prompts: int = _f(64, "Prompts of the held-out preference set (each with "
                                     "ground truth, teacher, student and noised candidates, "
                                     "scored once by the expert); 0: no held-out accuracy", OURS)
    proxy_eval_seed: int = _f(1234, "Seed of the held-out preference set (its data order and "
                              "its samples)", OURS)

    #: The reference code's flag names, accepted for the keys that now share the proxy's name.
    KEY_ALIASES = {"rm_batch_size": "proxy_batch_size", "rm_lr": "proxy_lr",
                   "latent_rm_loss_type": "proxy_loss_type",
                   "pretrained_latent_rm": "pretrained_proxy"}
    KEY_GROUPS = {
        **LCDConfig.KEY_GROUPS,
        "Reward": ("reward", "reward_params", "reward_scale", "proxy_batch_size",
                   "vae_decode_batch_size", "vae_gradient_checkpointing", "expert_logit_scale",
                   "report"),
        "Latent proxy RM (LRM)": (
            "proxy", "proxy_params", "pretrained_proxy", "proxy_lr", "proxy_loss_type",
            "smooth_gt_label", "proxy_warmup_steps", "proxy_updates_per_step", "proxy_update_every",
            "proxy_replay_size", "proxy_rehearsal_set", "proxy_rehearsal_batch_size",
            "proxy_rehearsal_weight"),
        "LRM held-out evidence": ("proxy_eval_shards_path_or_url", "proxy_eval_num_prompts",
                                  "proxy_eval_seed"),
    }

    def validate(self) -> None:
        """LCD checks plus the reward and proxy settings (registered names, values, paths)."""
        super().validate()
        check_reward_and_proxy(self)
        if self.report:
            from .presets import preset_for

            if getattr(preset_for("rg-lcd"), "after_run", None) is None:
                raise ConfigError("report: no registered preset writes a report after rg-lcd "
                                  "(the embedded world's does; is rewardkit.world.plugin "
                                  "disabled?); drop report")
        self.require_non_negative("reward_scale", "proxy_warmup_steps", "proxy_replay_size",
                                  "proxy_eval_num_prompts")
        self.require_positive("proxy_batch_size", "vae_decode_batch_size", "proxy_lr",
                              "proxy_updates_per_step", "proxy_update_every",
                              "proxy_rehearsal_batch_size", "proxy_rehearsal_weight")
        if self.proxy_rehearsal_set is not None:
            if self.proxy == NO_PROXY:
                raise ConfigError("proxy_rehearsal_set is only used with a proxy; set proxy=lrm "
                                  "or drop proxy_rehearsal_set")
            check_saved_set("proxy_rehearsal_set", self.proxy_rehearsal_set,
                            "pass the preference_set/ folder lrm-pretrain wrote")
        self.require_positive("expert_logit_scale")
        if self.proxy_replay_size and self.proxy_replay_size < self.proxy_batch_size:
            raise ConfigError(f"proxy_replay_size ({self.proxy_replay_size}) must hold at least "
                              f"one update's proxy_batch_size ({self.proxy_batch_size}) triples, or be 0")
        if self.proxy_eval_shards_path_or_url:
            from ..data.specs import check_data_spec

            check_data_spec("proxy_eval_shards_path_or_url", self.proxy_eval_shards_path_or_url)
        if self.proxy_loss_type not in PROXY_LOSS_TYPES:
            raise ConfigError(f"proxy_loss_type must be one of {', '.join(PROXY_LOSS_TYPES)}, got "
                              f"{self.proxy_loss_type!r}")
        self.require_folder("pretrained_proxy")


__all__ = ["RGLCDConfig"]
