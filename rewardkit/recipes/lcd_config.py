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

from dataclasses import dataclass
from typing import ClassVar, Optional

from ..config import OURS, REF
from ..config import config_field as _f
from ..consistency import LOSS_TYPES
from ..errors import ConfigError
from ..training.compile import check_compile
from ..training.config import DEFAULT_VALIDATION_PROMPTS, TrainingConfig, _choice, check_named


@dataclass
class LCDConfig(TrainingConfig):
    """Plain latent consistency distillation (LCD) of a Stable Diffusion teacher: the training
    loop's keys (:class:`~rewardkit.training.config.TrainingConfig`) plus LCD's own."""

    output_dir: str = _f("lcd-model", "Where checkpoints, validation images, metrics and the final "
                         "pipeline go", OURS)
    tracker_project_name: str = _f("rewardkit-lcd", "Tracker project name", OURS)
    pretrained_student: Optional[str] = _f(
        None, "Start the student (and its EMA target) from a distilled student instead of the "
        "teacher: a pipeline folder (lcd / rg-lcd output_dir/pipeline) or a checkpoint-N "
        "folder; to go on distilling, or to add reward guidance to an LCD student", OURS)
    solver: str = _f("ddim", "Registered consistency solver (the teacher's ODE step)", REF)
    solver_params: dict = _f({}, "Extra keyword arguments for the solver", OURS)
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

    # ---------------------------------------------------------------- validation grid
    validation_prompts: list[str] = _f(DEFAULT_VALIDATION_PROMPTS, "Prompts of the validation grid",
                                       OURS)
    validation_seeds: list[int] = _f([0], "Seeds of the validation grid (one row per prompt x seed)",
                                     OURS)
    validation_inference_steps: list[int] = _f([1, 2, 4], "LCMScheduler step counts (columns)",
                                               OURS)
    validation_guidance_scale: float = _f(7.5, "Pipeline guidance_scale of validation samples "
                                          "(embeds w = guidance_scale - 1)", OURS)

    #: Topics of ``rewardkit run lcd --help``, in the order diffusers' LCD scripts group their
    #: arguments (every key is in exactly one; a test checks it).
    KEY_GROUPS: ClassVar[dict[str, tuple[str, ...]]] = {
        "Model": TrainingConfig.KEY_GROUPS["Model"] + ("pretrained_student",),
        "Data": TrainingConfig.KEY_GROUPS["Data"],
        "Training and optimiser": (TrainingConfig.KEY_GROUPS["Training and optimiser"]
                                   + ("gradient_checkpointing",)),
        "Consistency distillation": (
            "solver", "solver_params", "w_min", "w_max", "num_ddim_timesteps",
            "unet_time_cond_proj_dim", "loss_type", "huber_c", "ema_decay",
            "timestep_scaling_factor", "batched_teacher_call"),
        "LoRA": ("use_lora", "lora_rank", "lora_alpha", "lora_target_modules"),
        "Precision and distribution": ("mixed_precision", "channels_last", "compile",
                                       "compile_backend", "compile_mode"),
        "Checkpoints": TrainingConfig.KEY_GROUPS["Checkpoints"],
        "Validation and logging": (
            "validation_steps", "validation_prompts", "validation_seeds",
            "validation_inference_steps", "validation_guidance_scale", "report_to",
            "tracker_project_name"),
        "Reward-hacking guard": TrainingConfig.KEY_GROUPS["Reward-hacking guard"],
    }

    def validate(self) -> None:
        """The shared checks, then LCD's own, naming the key, before anything is loaded."""
        super().validate()
        self.require_folder("pretrained_student")
        self.require_positive("num_ddim_timesteps", "unet_time_cond_proj_dim", "lora_rank",
                              "timestep_scaling_factor", "lora_alpha")
        self.require_non_negative("w_min", "huber_c")
        check_named(self, "solver", "solver",
                    reserved={"num_ddim_timesteps": "num_ddim_timesteps",
                              "alphas_cumprod": "pretrained_teacher_model"})
        check_guidance_input(self.backbone, self.unet_time_cond_proj_dim)
        if self.unet_time_cond_proj_dim is not None and self.unet_time_cond_proj_dim % 2:
            raise ConfigError(f"unet_time_cond_proj_dim must be even, got "
                              f"{self.unet_time_cond_proj_dim}")
        if self.w_min > self.w_max:
            raise ConfigError(f"w_min ({self.w_min}) must not exceed w_max ({self.w_max})")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1], got {self.ema_decay}")
        _choice("loss_type", self.loss_type, LOSS_TYPES)  # the consistency distances
        if self.compile:
            check_compile(self.compile_backend, self.compile_mode)
        if any(s <= 0 for s in self.validation_inference_steps):
            raise ConfigError("validation_inference_steps must all be positive, got "
                              f"{self.validation_inference_steps}")


def check_guidance_input(backbone: str, time_cond_proj_dim: int | None) -> None:
    """Refuse a guidance embedding (``unet_time_cond_proj_dim``) for a backbone whose students
    take none (``guidance_embedding = False``: guidance baked in by distillation, e.g.
    ``stable-diffusion-3``), naming the key, before anything loads."""
    from ..errors import UnknownComponentError
    from ..plugins import get_host

    if time_cond_proj_dim is None:
        return
    try:
        factory = get_host().get("backbone", backbone).factory
    except UnknownComponentError:
        return  # named where the backbone is built
    if getattr(factory, "guidance_embedding", True) is False:
        raise ConfigError(f"unet_time_cond_proj_dim: the '{backbone}' backbone's students take no "
                          "guidance embedding (the guidance is baked in by distillation; "
                          "w_min = w_max picks it); set unet_time_cond_proj_dim to none")


__all__ = ["LCDConfig", "check_guidance_input"]
