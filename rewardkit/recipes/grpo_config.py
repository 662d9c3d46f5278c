"""The typed configuration of the ``grpo`` recipe (:mod:`rewardkit.recipes.grpo`): the
student-tuning keys plus the group, the clipped objective, the KL term and the rollouts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..config import OURS
from ..config import config_field as _f
from ..errors import ConfigError
from ..training.config import check_reward
from .student_tuning import StudentTuningConfig


@dataclass
class GRPOConfig(StudentTuningConfig):
    """GRPO over the student's stochastic consistency sampler: the student-tuning keys plus the
    group, the clipped objective, the KL term and the rollout schedule."""

    output_dir: str = _f("grpo-model", "Where checkpoints, validation images, metrics and the "
                         "final pipeline go", OURS)
    tracker_project_name: str = _f("rewardkit-grpo", "Tracker project name", OURS)
    sample_steps: int = _f(4, "Consistency sampling steps of each rollout (S - 1 of them are "
                           "policy steps; at least 2)", OURS)
    group_size: int = _f(4, "Samples per prompt (G): advantages are relative to the group",
                         OURS)
    clip_range: float = _f(1e-4, "eps of the clipped ratio (DDPO's default: log-densities "
                           "are summed over every latent dimension, so ratios move fast)", OURS)
    adv_clip_max: float = _f(5.0, "Advantages are clipped to +-this", OURS)
    kl_coef: float = _f(0.0, "Weight of the KL to the starting student (0: off; on a full "
                        "student it keeps a copy of it)", OURS)
    timestep_fraction: float = _f(1.0, "Fraction of the policy steps trained on per rollout, "
                                  "drawn at random", OURS)
    updates_per_rollout: int = _f(1, "Optimiser steps each rollout serves", OURS)
    rollout_chunks: int = _f(1, "Sample each rollout in this many chunks of whole groups, the "
                             "RM scoring one chunk in a background thread while the next is "
                             "sampled (an RM on the host or behind a server then overlaps the "
                             "sampling)", OURS)
    gradient_checkpointing: bool = _f(False, "Recompute the student's activations in backward",
                                      OURS)

    KEY_GROUPS: ClassVar[dict[str, tuple[str, ...]]] = {
        **StudentTuningConfig.KEY_GROUPS,
        "Policy optimisation": ("group_size", "clip_range", "adv_clip_max", "kl_coef",
                                "timestep_fraction", "updates_per_rollout", "rollout_chunks",
                                "gradient_checkpointing"),
    }

    def validate(self) -> None:
        """The shared checks, then the objective's, naming the key."""
        super().validate()
        check_reward(self)  # any RM: no gradient is taken through it
        self.require_positive("clip_range", "adv_clip_max", "updates_per_rollout",
                              "rollout_chunks")
        self.require_non_negative("kl_coef")
        if self.sample_steps < 2:
            raise ConfigError(f"sample_steps must be at least 2 (a {self.sample_steps}-step "
                              "chain has no stochastic step to optimise), got "
                              f"{self.sample_steps}")
        if self.group_size < 2:
            raise ConfigError(f"group_size must be at least 2 (advantages are relative to the "
                              f"group), got {self.group_size}")
        if not 0 < self.timestep_fraction <= 1:
            raise ConfigError(f"timestep_fraction must be in (0, 1], got {self.timestep_fraction}")
        if self.updates_per_rollout > 1 and self.gradient_accumulation_steps > 1:
            raise ConfigError("updates_per_rollout > 1 takes gradient_accumulation_steps = 1 (a "
                              "rollout then serves whole optimiser steps); raise "
                              "train_batch_size or group_size instead")


__all__ = ["GRPOConfig"]
