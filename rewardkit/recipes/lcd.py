"""The ``lcd`` recipe: plain latent consistency distillation (LCD), on the training loop.

One optimiser step (the loop, :mod:`rewardkit.training.loop`, runs it; this file is the
algorithm)::

    batch -> z0 (VAE-encoded or pre-encoded), c = E(captions), empty = E("")
    f_theta, f_theta-, L_LCD = lcd_forward(...)     # losses(): rewardkit.training.step
    backward; clip; optimiser + LR step             # the loop
    target <- mu target + (1 - mu) theta            # after_step()

``rg-lcd`` (:mod:`rewardkit.recipes.rg_lcd`) builds on it: its losses add the reward term, its
after-step work adds the proxy update.

Distributed layout: only trained modules (the student) go through ``accelerator.prepare``; the
teacher, the EMA target, the VAE and the text encoder stay outside, moved to the device once.

LoRA mode (``use_lora``): the target network is the online student itself under ``no_grad``
(``ema_decay`` unused), as in diffusers' LCD-LoRA scripts; the EMA of a full UNet copy would undo
LoRA's memory savings.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..backbones.base import save_student_pipeline
from ..backbones.conditioning import Conditioning
from ..consistency import EMAUpdater
from ..errors import ConfigError
from ..solvers.base import ConsistencySolver
from ..training.compile import compile_modules
from ..training.loop import TrainingLoop
from ..training.metrics import log_validation_images
from ..training.runtime import fp32_master_weights
from ..training.safe_state import load_tensor_file, save_tensor_file
from ..training.step import LCDHyper, StepOutputs, lcd_forward
from ..training.validation import guard_samples, validation_grid
from .lcd_config import LCDConfig

#: The EMA target's weights in a checkpoint (full fine-tuning).
TARGET_WEIGHTS = "target.safetensors"


class LCDRecipe(TrainingLoop):
    """Latent consistency distillation (LCD) of a diffusion teacher into a few-step student."""

    name = "lcd"
    Config = LCDConfig
    component_keys = {"solver": ("solver", ConsistencySolver)}
    progress_keys = ("lcd_loss", "lr", "step_time")

    def __init__(self, config: LCDConfig, components: dict[str, Any] | None = None) -> None:
        super().__init__(config, components)
        self.config: LCDConfig = config

    # ================================================================ models

    def build_solver(self, backbone: Any) -> Any:
        """The consistency solver on the teacher's noise process (a built one must be on it)."""
        from ..plugins import get_host

        cfg = self.config
        solver = self.components.get("solver")
        if solver is None:
            return get_host().get("solver", cfg.solver).build(
                alphas_cumprod=backbone.schedule, num_ddim_timesteps=cfg.num_ddim_timesteps,
                **cfg.solver_params)
        solver.check_fits(backbone.schedule, cfg.num_ddim_timesteps)
        return solver

    def build_student(self, backbone: Any) -> nn.Module:
        """The student: the teacher UNet with the guidance embedding (``unet_time_cond_proj_dim``),
        or the distilled ``pretrained_student``; with LoRA adapters in LoRA mode."""
        cfg = self.config
        if cfg.pretrained_student:
            # a LoRA student goes on as LoRA with use_lora, else merged into a full UNet
            student = backbone.load_student(cfg.pretrained_student,
                                            lora=None if cfg.use_lora else False)
            found = getattr(student.config, "time_cond_proj_dim", None)
            if found != cfg.unet_time_cond_proj_dim:
                raise ConfigError(f"pretrained_student '{cfg.pretrained_student}' has a guidance "
                                  f"embedding of size {found}, the config "
                                  f"unet_time_cond_proj_dim {cfg.unet_time_cond_proj_dim}; set "
                                  f"unet_time_cond_proj_dim to {found}")
            if cfg.use_lora and getattr(student, "peft_config", None):
                return student
        else:
            student = backbone.build_student(time_cond_proj_dim=cfg.unet_time_cond_proj_dim)
        if cfg.use_lora:
            student = backbone.add_lora(student, rank=cfg.lora_rank, alpha=cfg.lora_alpha,
                                        target_modules=cfg.lora_target_modules)
        return student

    def build_models(self) -> nn.Module:
        """The solver, the student (trained) and its EMA target copy."""
        cfg, backbone = self.config, self.backbone
        self.solver = self.build_solver(backbone)
        student = self.build_student(backbone)
        if cfg.use_lora:
            self.target = None  # the online student under no_grad (see module docstring)
        else:
            self.target = copy.deepcopy(student).requires_grad_(False).to(self.device)
        if cfg.gradient_checkpointing:
            student.enable_gradient_checkpointing()
        student.train()
        if cfg.channels_last:
            for unet in (student, self.target, backbone.unet):
                if unet is not None:
                    unet.to(memory_format=torch.channels_last)
        if cfg.compile:
            compile_modules((student, self.target, backbone.unet), cfg.compile_backend,
                            cfg.compile_mode, self.device)
        return student

    def after_prepare(self) -> None:
        """Start the target from the wrapped student's weights, and its EMA updater."""
        if self.target is not None:
            # DDP/DeepSpeed broadcast rank 0's weights at wrap time; start every rank's target
            # from those (matters when no seed makes the new guidance embedding's init agree)
            self.target.load_state_dict(self.unwrapped_student.state_dict())
        # target <- mu target + (1 - mu) theta over tensor lists built once (loads are in place)
        # under DeepSpeed with bf16/fp16, theta is the optimiser's fp32 master weights, not the
        # engine's rounded copy (the target above starts equal to both)
        self.ema = (EMAUpdater(self.target, self.unwrapped_student,
                               master=fp32_master_weights(self.accelerator))
                    if self.target is not None else None)

    @property
    def student(self) -> nn.Module:
        """The trained student, as wrapped for data parallelism."""
        return self.model

    @property
    def unwrapped_student(self) -> nn.Module:
        """The student module without DDP/DeepSpeed wrappers."""
        return self.unwrapped_model

    @property
    def target_network(self) -> nn.Module:
        """The EMA target (full fine-tuning) or the online student (LoRA)."""
        return self.target if self.target is not None else self.unwrapped_student

    @property
    def hyper(self) -> LCDHyper:
        """The LCD step's numbers, from the config."""
        cfg = self.config
        return LCDHyper(w_min=cfg.w_min, w_max=cfg.w_max,
                        time_cond_proj_dim=cfg.unet_time_cond_proj_dim, loss_type=cfg.loss_type,
                        huber_c=cfg.huber_c, timestep_scaling=cfg.timestep_scaling_factor,
                        batched_teacher=cfg.batched_teacher_call)

    # ================================================================ the algorithm

    def encode_batch(self, batch: dict[str, Any]) -> tuple[torch.Tensor, Conditioning, Conditioning]:
        """Scaled latents ``z0``, the prompts' and the empty prompt's conditioning (no grad, fp32)."""
        device = self.device
        # non-blocking: a prefetched batch is in pinned memory on CUDA, so the copy overlaps
        if "latents" in batch:
            latents = batch["latents"].to(device=device, non_blocking=True).float()
        else:
            latents = self.backbone.encode_images(batch["pixel_values"].to(device, non_blocking=True),
                                                  generator=self.generator).float()
        cond = self.backbone.encode_prompts(batch["captions"]).float()
        uncond = self.backbone.empty_conditioning(latents.shape[0]).float()
        return latents, cond, uncond

    def forward(self, batch: dict[str, Any]) -> StepOutputs:
        """``lcd_forward`` on one batch: ``f_theta`` (with its graph), ``f_theta-`` and ``L_LCD``."""
        latents, cond, uncond = self.encode_batch(batch)
        return lcd_forward(
            backbone=self.backbone, solver=self.solver, student=self.student,
            target=self.target_network, latents=latents, cond=cond, uncond=uncond,
            captions=batch["captions"], hyper=self.hyper,
            generator=self.generator, autocast=self.autocast,
            global_step=self.global_step)

    def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``L_LCD = d(f_theta, f_theta-)``; the step's outputs stay in :attr:`step`."""
        self.step = self.forward(batch)
        return {"lcd_loss": self.step.lcd_loss}

    def after_step(self) -> dict[str, torch.Tensor | float]:
        """``target <- mu target + (1 - mu) theta``, once per optimiser step."""
        if self.ema is not None:
            self.ema.update(self.config.ema_decay)
        return {}

    # ================================================================ checkpoints and output

    def save_files(self, folder: Path) -> None:
        """The EMA target's weights (full fine-tuning)."""
        if self.target is not None:
            save_tensor_file(self.target.state_dict(), folder / TARGET_WEIGHTS)

    def load_files(self, folder: Path) -> None:
        """Restore the EMA target."""
        if self.target is not None:
            self.target.load_state_dict(load_tensor_file(folder / TARGET_WEIGHTS))

    def validate(self) -> Path | None:
        """The validation grid of the current student (main process)."""
        cfg = self.config
        if not cfg.validation_prompts:
            return None
        path = validation_grid(
            self.backbone, self.unwrapped_student, cfg.validation_prompts,
            cfg.validation_seeds, cfg.validation_inference_steps,
            self.output_dir / "validation" / f"step-{self.global_step}.png",
            guidance_scale=cfg.validation_guidance_scale,
            time_cond_proj_dim=cfg.unet_time_cond_proj_dim,
            original_inference_steps=cfg.num_ddim_timesteps,
            timestep_scaling=cfg.timestep_scaling_factor)
        log_validation_images(self.accelerator, path, self.global_step)
        return path

    def guard_images(self, prompts: list[str], seeds: list[int], steps: int) -> torch.Tensor:
        """The student's fixed samples for the reward-hacking guard, at the training resolution."""
        cfg = self.config
        return guard_samples(self.backbone, self.unwrapped_student, prompts, seeds, steps=steps,
                             guidance_scale=cfg.validation_guidance_scale,
                             time_cond_proj_dim=cfg.unet_time_cond_proj_dim,
                             original_inference_steps=cfg.num_ddim_timesteps,
                             timestep_scaling=cfg.timestep_scaling_factor,
                             latent_size=self.backbone.latent_side(cfg.resolution))

    def export(self, folder: Path) -> Path:
        """The student (and EMA target) as it is now, as a pipeline folder."""
        return self._save_pipeline(self.backbone, self.unwrapped_student, self.target, folder)

    def save_final(self) -> Path:
        """The online student as a complete diffusers pipeline folder (``output_dir/pipeline``),
        with the EMA target UNet in ``pipeline/unet_target`` (full fine-tuning only)."""
        path = self.output_dir / "pipeline"
        if self.accelerator.is_main_process:
            self._save_pipeline(self.backbone, self.unwrapped_student, self.target, path)
        self.accelerator.wait_for_everyone()
        return path

    def _save_pipeline(self, backbone: Any, student: nn.Module, target: nn.Module | None,
                       path: Path) -> Path:
        """The student (and the EMA ``target``, for a backbone that keeps one) as a pipeline."""
        return save_student_pipeline(backbone, student, path, target=target,
                                     original_inference_steps=self.config.num_ddim_timesteps,
                                     timestep_scaling=self.config.timestep_scaling_factor)

    def export_pipeline(self, checkpoint: str | Path, output: str | Path,
                        device: str = "cpu") -> Path:
        """The student of ``checkpoint`` (a ``checkpoint-N`` folder of this config's run) as a
        diffusers pipeline folder at ``output``, as :meth:`save_final` would have written it
        then: no data, optimiser or accelerator is needed (``rewardkit eval`` uses this)."""
        checkpoint, output = Path(checkpoint), Path(output)
        weights = checkpoint / "model.safetensors"
        if not weights.is_file():
            raise ConfigError(f"checkpoint {checkpoint} has no model.safetensors (a DeepSpeed "
                              "checkpoint keeps the student in its engine shards); evaluate "
                              "the run's pipeline/ or a checkpoint written without DeepSpeed")
        backbone = self.build_backbone(torch.device(device), torch.float32)
        backbone.configure(resolution=self.config.resolution)
        student = self.build_student(backbone)
        from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

        state = load_tensor_file(weights)
        for prefix in ("module.", "_orig_mod."):  # saved from a DDP- or compile-wrapped student
            consume_prefix_in_state_dict_if_present(state, prefix)
        try:
            student.load_state_dict(state)
            target = None
            if not self.config.use_lora and (checkpoint / TARGET_WEIGHTS).is_file():
                target = copy.deepcopy(student)
                target.load_state_dict(load_tensor_file(checkpoint / TARGET_WEIGHTS))
        except RuntimeError as exc:
            raise ConfigError(f"checkpoint {checkpoint}: its weights do not fit the student of "
                              f"{checkpoint.parent / 'config.json'} ({str(exc)[:200]})") from None
        return self._save_pipeline(backbone, student, target, output)


__all__ = ["LCDRecipe", "StepOutputs"]
