"""What the recipes that fine-tune a distilled few-step student share (``draft``, ``grpo``).

:class:`StudentTuningConfig` holds the keys of the student and its sampler, of the expert RM,
of LoRA and of the validation grid. :class:`StudentTuningRecipe` loads the student
(``Backbone.load_student``: a pipeline folder or a checkpoint), adds LoRA on request, builds
the expert, samples the validation grid, and saves a diffusers pipeline with the student's
scheduler (``LCMScheduler``; a flow teacher's ``FlowMatchEulerDiscreteScheduler``). The algorithms (:mod:`rewardkit.recipes.draft`,
:mod:`rewardkit.recipes.grpo`) write only their losses and after-step work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

import torch
from torch import nn

from ..backbones.base import save_student_pipeline
from ..config import OURS
from ..config import config_field as _f
from ..errors import ConfigError
from ..rewards.base import RewardModel
from ..rewards.build import build_expert
from ..training.config import DEFAULT_VALIDATION_PROMPTS, TrainingConfig
from ..training.loop import TrainingLoop
from ..training.metrics import log_validation_images
from ..training.validation import guard_samples, validation_grid


@dataclass
class StudentTuningConfig(TrainingConfig):
    """The training loop's keys plus the student, its sampler, the expert RM, LoRA and the
    validation grid."""

    pretrained_student: Optional[str] = field(default=None, metadata={
        "help": "The few-step student to fine-tune: a distilled pipeline folder (lcd / rg-lcd "
                "output_dir/pipeline) or a checkpoint-N folder (required)", "provenance": OURS})
    train_shards_path_or_url: Optional[str] = _f(None, "Training prompts: a registered prompt "
                                                 "set or a .txt/.jsonl/.json/.csv/.tsv file "
                                                 "(required)", OURS)
    learning_rate: float = _f(1e-5, "AdamW learning rate of the student", OURS)
    # ---------------------------------------------------------------- the sampler
    sample_steps: int = _f(2, "Consistency sampling steps of each training sample", OURS)
    guidance_scale: float = _f(7.5, "The student's guidance input (it embeds w = scale - 1); a "
                               "student with the guidance baked in (SD3) has no such input, and "
                               "draft's LCD term then guides the teacher with this scale", OURS)
    num_ddim_timesteps: int = _f(50, "The LCM schedule's original_inference_steps (the "
                                 "student's distillation grid)", OURS)
    timestep_scaling_factor: float = _f(10.0, "The LCM boundary-condition timestep scaling",
                                        OURS)
    # ---------------------------------------------------------------- the expert
    reward: Optional[str] = _f(None, "Registered reward model (required)", OURS)
    reward_params: dict = _f({}, "Keyword arguments for the reward model", OURS)
    # ---------------------------------------------------------------- LoRA and validation
    use_lora: bool = _f(False, "Train LoRA adapters on the student (a LoRA student trains its "
                        "own adapters either way)", OURS)
    lora_rank: int = _f(16, "LoRA rank", OURS)
    lora_alpha: Optional[int] = _f(None, "LoRA alpha (None: the peft default)", OURS)
    validation_prompts: list[str] = _f(list(DEFAULT_VALIDATION_PROMPTS), "Prompts of the "
                                       "validation grid", OURS)
    validation_seeds: list[int] = _f([0], "Seeds of the validation grid", OURS)
    validation_inference_steps: list[int] = _f([1, 2, 4], "Step counts of the validation grid",
                                               OURS)

    KEY_GROUPS: ClassVar[dict[str, tuple[str, ...]]] = {
        **TrainingConfig.KEY_GROUPS,
        "Model": TrainingConfig.KEY_GROUPS["Model"] + ("pretrained_student",),
        "Sampler": ("sample_steps", "guidance_scale", "num_ddim_timesteps",
                    "timestep_scaling_factor"),
        "Reward": ("reward", "reward_params"),
        "LoRA": ("use_lora", "lora_rank", "lora_alpha"),
        "Validation": ("validation_prompts", "validation_seeds", "validation_inference_steps"),
    }

    def check_training_data(self) -> None:
        """The training prompts: a registered prompt set (``NAME?key=value``) or a file."""
        from ..evaluation.prompt_sets import check_prompt_spec

        check_prompt_spec("train_shards_path_or_url", self.train_shards_path_or_url)

    def validate(self) -> None:
        """The student is given and a folder; then the loop's checks and the shared keys'."""
        if not self.pretrained_student:
            raise ConfigError("pretrained_student is required: a distilled student's pipeline "
                              "folder or checkpoint-N (train one with `rewardkit run lcd`)")
        self.require_folder("pretrained_student")
        super().validate()
        self.require_positive("sample_steps", "num_ddim_timesteps", "timestep_scaling_factor",
                              "lora_rank", "lora_alpha")


class StudentTuningRecipe(TrainingLoop):
    """A recipe that fine-tunes a distilled few-step student on prompts with an expert RM."""

    Config: ClassVar[type] = StudentTuningConfig
    batch_kind = "prompts"
    component_keys = {"reward": ("reward", RewardModel)}

    def build_models(self) -> nn.Module:
        """The student, loaded from ``pretrained_student`` (LoRA added with ``use_lora``)."""
        cfg, backbone = self.config, self.backbone
        student = backbone.load_student(cfg.pretrained_student)
        if cfg.use_lora and not getattr(student, "peft_config", None):
            student = backbone.add_lora(student, rank=cfg.lora_rank, alpha=cfg.lora_alpha)
        self.time_cond_proj_dim = getattr(student.config, "time_cond_proj_dim", None)
        return student

    def optimizer_parameters(self, module: nn.Module) -> list[nn.Parameter]:
        """The student's trainable parameters (the adapters, for a LoRA student)."""
        return [p for p in module.parameters() if p.requires_grad]

    def after_prepare(self) -> None:
        """The expert RM on this process's device."""
        cfg = self.config
        self.expert = build_expert(cfg.reward, cfg.reward_params, device=self.device,
                                   mixed_precision=cfg.mixed_precision,
                                   given=self.components.get("reward"))

    def sampler_settings(self) -> dict[str, Any]:
        """The keyword arguments of the student's consistency sampler, from the config."""
        cfg = self.config
        return dict(steps=cfg.sample_steps, guidance_scale=cfg.guidance_scale,
                    time_cond_proj_dim=self.time_cond_proj_dim,
                    original_inference_steps=cfg.num_ddim_timesteps,
                    timestep_scaling=cfg.timestep_scaling_factor,
                    latent_size=self.backbone.latent_side(cfg.resolution))

    def validate(self) -> Path | None:
        """The validation grid of the current student (main process)."""
        cfg = self.config
        if not cfg.validation_prompts:
            return None
        path = validation_grid(
            self.backbone, self.unwrapped_model, cfg.validation_prompts, cfg.validation_seeds,
            cfg.validation_inference_steps,
            self.output_dir / "validation" / f"step-{self.global_step}.png",
            guidance_scale=cfg.guidance_scale, time_cond_proj_dim=self.time_cond_proj_dim,
            original_inference_steps=cfg.num_ddim_timesteps,
            timestep_scaling=cfg.timestep_scaling_factor)
        log_validation_images(self.accelerator, path, self.global_step)
        return path

    def guard_images(self, prompts: list[str], seeds: list[int], steps: int) -> torch.Tensor:
        """The student's fixed samples for the reward-hacking guard."""
        settings = {k: v for k, v in self.sampler_settings().items() if k != "steps"}
        return guard_samples(self.backbone, self.unwrapped_model, prompts, seeds, steps=steps,
                             **settings)

    def trained_reward_model(self) -> RewardModel:
        """The expert RM the student is trained on (directly or through a proxy)."""
        return self.expert

    def export(self, folder: Path) -> Path:
        """The student as it is now, as a pipeline folder."""
        cfg = self.config
        return save_student_pipeline(self.backbone, self.unwrapped_model, folder,
                                     original_inference_steps=cfg.num_ddim_timesteps,
                                     timestep_scaling=cfg.timestep_scaling_factor)

    def save_extra(self) -> None:
        """Write more of the output beside the pipeline (main process; default: nothing)."""

    def save_final(self) -> Path:
        """The student as a pipeline folder (``output_dir/pipeline``), then :meth:`save_extra`."""
        path = self.output_dir / "pipeline"

        def save() -> None:
            self.export(path)
            self.save_extra()

        self.on_main_process(save)
        return path


__all__ = ["StudentTuningConfig", "StudentTuningRecipe"]
