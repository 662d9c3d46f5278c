"""The typed configuration of the ``lcd`` recipe (and the base of ``rg-lcd``'s).

Field names map 1:1 to the flags of diffusers' ``examples/consistency_distillation/
train_lcm_distill_sd_wds.py`` (``--pretrained_teacher_model``, ``--w_min``, ``--resume_from_checkpoint``
...), so a diffusers command line carries over: ``rewardkit run lcd --pretrained_teacher_model X
--w_min 3``. Every field says where its default comes from in its help text: "reference default"
(the Ji4chenLi/rg-lcd / diffusers script) or "rewardkit default".

:meth:`LCDConfig.validate` runs before any model loads and raises
:class:`rewardkit.errors.ConfigError` naming the offending key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

from ..config import OURS, REF
from ..config import config_field as _f
from ..consistency import LOSS_TYPES
from ..errors import ConfigError
from ..training.compile import check_compile
from ..training.config import (DEFAULT_VALIDATION_PROMPTS, LR_SCHEDULERS, MIXED_PRECISION,
                               REPORT_TO, _choice, check_component, check_resolution,
                               check_resume_keys, check_teacher_location)
from .base import RecipeConfig


@dataclass
class LCDConfig(RecipeConfig):
    """Plain latent consistency distillation (LCD) of a Stable Diffusion teacher."""

    # ---------------------------------------------------------------- models and data
    pretrained_teacher_model: str = field(metadata={
        "help": "Teacher: a hub id or a local diffusers pipeline folder (required)",
        "provenance": REF})
    train_shards_path_or_url: str = field(metadata={
        "help": "Training data: webdataset shards (paths, brace ranges, pipe:), an image+caption "
                "folder or a folder of pre-encoded latent shards (required)", "provenance": REF})
    revision: Optional[str] = _f(None, "Teacher revision on the hub")
    variant: Optional[str] = _f(None, "Teacher weight variant, e.g. fp16")
    output_dir: str = _f("lcd-model", "Where checkpoints, validation images, metrics and the final "
                         "pipeline go", OURS)
    backbone: str = _f("stable-diffusion", "Registered backbone that loads the teacher", OURS)
    backbone_params: dict = _f({}, "Extra keyword arguments for the backbone", OURS)
    pretrained_vae_model_name_or_path: Optional[str] = _f(
        None, "A VAE to use instead of the teacher's (hub id or AutoencoderKL folder), e.g. "
        "madebyollin/sdxl-vae-fp16-fix for SDXL in fp16", REF)
    solver: str = _f("ddim", "Registered consistency solver (the teacher's ODE step)", REF)
    solver_params: dict = _f({}, "Extra keyword arguments for the solver", OURS)
    resolution: int = _f(512, "Training image side in pixels")
    center_crop: bool = _f(False, "Center crop instead of random crop")
    random_flip: bool = _f(False, "Random horizontal flips")
    train_batch_size: int = _f(16, "Batch size per process")
    dataloader_num_workers: int = _f(0, "Threads decoding samples (batches do not depend on it)",
                                     OURS)
    dataloader_seed: Optional[int] = _f(None, "Seed of the data order (defaults to seed)", OURS)

    # ---------------------------------------------------------------- optimisation
    max_train_steps: int = _f(10000, "Optimiser steps to train")
    learning_rate: float = _f(1e-6, "AdamW learning rate (full fine-tuning)")
    lr_scheduler: str = _f("constant", f"LR schedule: {', '.join(LR_SCHEDULERS)}")
    lr_warmup_steps: int = _f(500, "LR warm-up steps (ignored by 'constant')")
    gradient_accumulation_steps: int = _f(1, "Micro-batches per optimiser step")
    mixed_precision: str = _f("no", "Mixed precision: no, fp16 or bf16 (frozen models run in it)",
                              OURS)
    gradient_checkpointing: bool = _f(False, "Recompute student activations in backward")
    channels_last: bool = _f(False, "Student, target and teacher UNets in channels-last memory "
                             "format (faster convolutions on GPUs with tensor cores)", OURS)
    compile: bool = _f(False, "torch.compile the student, target and teacher UNets (the first "
                       "steps compile; see docs/training.md for what was measured)", OURS)
    compile_backend: str = _f("inductor", "torch.compile backend when compile is on (inductor, "
                              "aot_eager, ...: torch._dynamo.list_backends())", OURS)
    compile_mode: Optional[str] = _f(None, "torch.compile mode when compile is on (default, "
                                     "reduce-overhead, max-autotune, max-autotune-no-cudagraphs)",
                                     OURS)
    use_8bit_adam: bool = _f(False, "bitsandbytes AdamW8bit (when installed)")
    adam_beta1: float = _f(0.9, "AdamW beta1")
    adam_beta2: float = _f(0.999, "AdamW beta2")
    adam_weight_decay: float = _f(0.0, "AdamW weight decay")
    adam_epsilon: float = _f(1e-8, "AdamW epsilon")
    max_grad_norm: float = _f(1.0, "Gradient-norm clip")

    # ---------------------------------------------------------------- consistency distillation
    w_min: float = _f(5.0, "Lowest guidance scale w (LCM formulation) sampled per example")
    w_max: float = _f(15.0, "Highest guidance scale w sampled per example")
    num_ddim_timesteps: int = _f(50, "Points N of the skipping-step solver grid (k = T // N)")
    unet_time_cond_proj_dim: int | None = _f(
        256, "Size of the student's guidance-scale (w) embedding; none: no w input, guidance "
             "baked in (LCM-LoRA style: a --use_lora output then loads with plain load_lora_weights)")
    loss_type: str = _f("huber", "Consistency distance: huber (pseudo-Huber) or l2")
    huber_c: float = _f(0.001, "Pseudo-Huber constant c")
    ema_decay: float = _f(0.95, "EMA decay mu of the target network")
    timestep_scaling_factor: float = _f(10.0, "Boundary-condition timestep scaling s")
    batched_teacher_call: bool = _f(True, "Run the guided teacher as one call on [prompt; empty] "
                                    "(faster); false: two calls of the batch (less peak memory, "
                                    "as diffusers' scripts do)", OURS)

    # ---------------------------------------------------------------- LoRA
    use_lora: bool = _f(False, "Train LoRA adapters instead of the full UNet", OURS)
    lora_rank: int = _f(64, "LoRA rank")
    lora_alpha: Optional[int] = _f(None, "LoRA alpha (None: the peft default)")
    lora_target_modules: Optional[list[str]] = _f(None, "LoRA target modules (None: the "
                                                  "backbone's default list)")

    # ---------------------------------------------------------------- checkpoints, validation, logs
    checkpointing_steps: int = _f(500, "Save a checkpoint every N optimiser steps (0: never)")
    checkpoints_total_limit: Optional[int] = _f(None, "Keep only the newest K checkpoints")
    resume_from_checkpoint: Optional[str] = _f(None, "'latest', a checkpoint name in output_dir "
                                               "(checkpoint-500) or a checkpoint folder")
    overwrite_output_dir: bool = _f(False, "Remove the run already in output_dir before starting "
                                    "(without it, a fresh run into a used folder is refused)",
                                    OURS)
    validation_steps: int = _f(200, "Validation grid every N steps (0: never)")
    validation_prompts: list[str] = _f(DEFAULT_VALIDATION_PROMPTS, "Prompts of the validation grid",
                                       OURS)
    validation_seeds: list[int] = _f([0], "Seeds of the validation grid (one row per prompt x seed)",
                                     OURS)
    validation_inference_steps: list[int] = _f([1, 2, 4], "LCMScheduler step counts (columns)",
                                               OURS)
    validation_guidance_scale: float = _f(7.5, "Pipeline guidance_scale of validation samples "
                                          "(embeds w = guidance_scale - 1)", OURS)
    seed: Optional[int] = _f(None, "Global seed (None: not seeded)")
    report_to: str = _f("tensorboard", "accelerate trackers: none, tensorboard, wandb or all "
                        "(skipped with a notice when not installed)")
    tracker_project_name: str = _f("rewardkit-lcd", "Tracker project name", OURS)

    #: Topics of ``rewardkit run lcd --help``, in the order diffusers' LCD scripts group their
    #: arguments (every key is in exactly one; a test checks it).
    KEY_GROUPS: ClassVar[dict[str, tuple[str, ...]]] = {
        "Model": ("pretrained_teacher_model", "revision", "variant", "backbone", "backbone_params",
                  "pretrained_vae_model_name_or_path", "output_dir", "overwrite_output_dir", "seed"),
        "Data": ("train_shards_path_or_url", "resolution", "center_crop", "random_flip",
                 "train_batch_size", "dataloader_num_workers", "dataloader_seed"),
        "Training and optimiser": (
            "max_train_steps", "learning_rate", "lr_scheduler", "lr_warmup_steps",
            "gradient_accumulation_steps", "gradient_checkpointing", "use_8bit_adam", "adam_beta1",
            "adam_beta2", "adam_weight_decay", "adam_epsilon", "max_grad_norm"),
        "Consistency distillation": (
            "solver", "solver_params", "w_min", "w_max", "num_ddim_timesteps",
            "unet_time_cond_proj_dim", "loss_type", "huber_c", "ema_decay",
            "timestep_scaling_factor", "batched_teacher_call"),
        "LoRA": ("use_lora", "lora_rank", "lora_alpha", "lora_target_modules"),
        "Precision and distribution": ("mixed_precision", "channels_last", "compile",
                                       "compile_backend", "compile_mode"),
        "Checkpoints": ("checkpointing_steps", "checkpoints_total_limit", "resume_from_checkpoint"),
        "Validation and logging": (
            "validation_steps", "validation_prompts", "validation_seeds",
            "validation_inference_steps", "validation_guidance_scale", "report_to",
            "tracker_project_name"),
    }

    def validate(self) -> None:
        """Reject bad values, naming the key, before anything is loaded."""
        from ..data.specs import check_data_spec
        from ..training.runtime import check_distributed_engine
        from .given import is_given

        check_teacher_location(self.pretrained_teacher_model)
        if self.pretrained_vae_model_name_or_path:
            from ..models import check_vae_location

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
        check_data_spec("train_shards_path_or_url", self.train_shards_path_or_url)
        for key in ("resolution", "train_batch_size", "max_train_steps",
                    "gradient_accumulation_steps", "num_ddim_timesteps",
                    "unet_time_cond_proj_dim", "lora_rank"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                raise ConfigError(f"{key} must be positive, got {getattr(self, key)}")
        check_resolution(self.pretrained_teacher_model, self.resolution)
        check_distributed_engine()
        if not is_given(self, "solver"):
            check_component("solver", "solver", self.solver, self.solver_params, "solver_params",
                            reserved={"num_ddim_timesteps": "num_ddim_timesteps",
                                      "alphas_cumprod": "pretrained_teacher_model"})
        if self.unet_time_cond_proj_dim is not None and self.unet_time_cond_proj_dim % 2:
            raise ConfigError(f"unet_time_cond_proj_dim must be even, got "
                              f"{self.unet_time_cond_proj_dim}")
        for key in ("lr_warmup_steps", "checkpointing_steps", "dataloader_num_workers", "validation_steps", "w_min",
                    "adam_weight_decay", "adam_epsilon", "huber_c"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must not be negative, got {getattr(self, key)}")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.max_grad_norm <= 0:
            raise ConfigError(f"max_grad_norm must be positive, got {self.max_grad_norm}")
        if self.w_min > self.w_max:
            raise ConfigError(f"w_min ({self.w_min}) must not exceed w_max ({self.w_max})")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1], got {self.ema_decay}")
        for key in ("adam_beta1", "adam_beta2"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"{key} must be in [0, 1), got {getattr(self, key)}")
        if self.timestep_scaling_factor <= 0:
            raise ConfigError("timestep_scaling_factor must be positive, got "
                              f"{self.timestep_scaling_factor}")
        _choice("loss_type", self.loss_type, LOSS_TYPES)  # the consistency distances
        _choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        _choice("lr_scheduler", self.lr_scheduler, LR_SCHEDULERS)
        _choice("report_to", self.report_to, REPORT_TO)
        if self.compile:
            check_compile(self.compile_backend, self.compile_mode)
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise ConfigError(f"checkpoints_total_limit must be at least 1, got "
                              f"{self.checkpoints_total_limit}")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise ConfigError(f"lora_alpha must be positive, got {self.lora_alpha}")
        if any(s <= 0 for s in self.validation_inference_steps):
            raise ConfigError("validation_inference_steps must all be positive, got "
                              f"{self.validation_inference_steps}")
        check_resume_keys(self.resume_from_checkpoint, self.output_dir, self.overwrite_output_dir)


__all__ = ["LCDConfig"]
