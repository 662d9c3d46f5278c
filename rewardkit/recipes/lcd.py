"""The ``lcd`` recipe: plain latent consistency distillation, and the loop ``rg-lcd`` extends.

One optimiser step::

    batch -> z0 (VAE-encoded or pre-encoded), c = E(captions), empty = E("")
    StepOutputs = lcd_forward(...)              # f_theta (grad), f_theta- (EMA), L_LCD
    loss = L_LCD + sum(extra_losses(step))      # rg-lcd adds -beta * reward
    backward; clip 1.0; optimiser + LR step; target <- mu target + (1 - mu) theta
    after_optimizer_step(step)                  # rg-lcd updates its proxy RM here

Extension points for subclasses (``rg-lcd``): :meth:`LCDRecipe.setup_extra`,
:meth:`~LCDRecipe.extra_losses`, :meth:`~LCDRecipe.after_optimizer_step`,
:meth:`~LCDRecipe.extra_state_dict` / :meth:`~LCDRecipe.load_extra_state_dict`,
:meth:`~LCDRecipe.save_extra` / :meth:`~LCDRecipe.load_extra`.

Distributed layout: only trained modules (the student, plus whatever ``setup_extra`` prepares,
e.g. an LRM) go through ``accelerator.prepare``; the teacher, the EMA target, the VAE and the text
encoder stay outside, moved to the device once. Logging, validation and the final save happen on
the main process; checkpoints are written by every process (DeepSpeed shards, per-rank RNG and
data positions) into a temporary folder renamed into place by the main process.

LoRA mode (``use_lora``): the target network is the online student itself under ``no_grad``
(``ema_decay`` unused), as in diffusers' LCD-LoRA scripts; the EMA of a full UNet copy would undo
LoRA's memory savings.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ..backbones.conditioning import Conditioning
from ..checks import deferred, nonfinite_count, require
from ..consistency import EMAUpdater
from ..errors import ConfigError
from ..solvers.base import ConsistencySolver
from ..training.checkpoint import (TARGET_WEIGHTS, check_resume_step, load_checkpoint,
                                   load_rank_state, restoring,
                                   resolve_resume, save_checkpoint, save_rank_state)
from ..training.compile import compile_modules
from ..training.errors import TrainingError, naming_out_of_memory
from ..training.metrics import (TrainingProgress, log_validation_images, start_logging,
                                write_run_config)
from ..training.output_dir import check_output_dir, clear_for_overwrite
from ..training.optim import build_lr_scheduler, build_optimizer
from ..training.runtime import build_accelerator, weight_dtype
from ..training.safe_state import (has_state, load_legacy_torch_file, load_state,
                                  load_tensor_file, save_state)
from ..training.step import LCDHyper, StepOutputs, lcd_forward
from ..training.validation import validation_grid
from .base import Recipe
from .lcd_config import LCDConfig

__all__ = ["LCDRecipe", "StepOutputs"]

logger = logging.getLogger(__name__)

EXTRA_STATE = "extra_state"  # .safetensors + .json (rewardkit.training.safe_state)


def _not_finite(step: int, term: str):
    def message(_: int, values: dict[str, float]) -> str:
        value = values.get(term, float("nan"))
        return (f"step {step}: {term} is not finite ({value}); stopping with the checkpoints "
                "written so far intact")
    return message


class LCDRecipe(Recipe):
    """Latent consistency distillation (LCD) of a diffusion teacher into a few-step student."""

    name = "lcd"
    Config = LCDConfig
    component_keys = {"solver": ("solver", ConsistencySolver)}

    def __init__(self, config: LCDConfig, components: dict[str, Any] | None = None) -> None:
        super().__init__(config, components)
        self.config: LCDConfig = config
        self.output_dir = Path(config.output_dir)
        self.global_step = 0

    # ================================================================ extension points

    def setup_extra(self, accelerator: Any) -> None:
        """Build extra models (RMs, a proxy and its optimiser); called after the student is prepared."""

    def extra_losses(self, step: StepOutputs) -> dict[str, torch.Tensor]:
        """Scalar loss terms added to ``L_LCD`` before backward (``rg-lcd``: ``-beta * reward``)."""
        return {}

    def after_optimizer_step(self, step: StepOutputs) -> dict[str, torch.Tensor | float]:
        """Work after the student's optimiser and EMA step (``rg-lcd``: the LRM update); metrics,
        as numbers or 0-d tensors (left on the device: the step reads them all at once)."""
        return {}

    def extra_state_dict(self) -> dict[str, Any]:
        """Extra state saved into each checkpoint by the main process: nested dicts, lists,
        numbers, strings and tensors (stored as safetensors + JSON, never pickled); a recipe
        whose state is non-empty reads it back on resume."""
        return {}

    def load_extra_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state_dict` returned."""

    def save_extra(self, checkpoint_dir: Path) -> None:
        """Write extra files into a checkpoint folder (main process, before it is renamed into place)."""

    def load_extra(self, checkpoint_dir: Path) -> None:
        """Read the files :meth:`save_extra` wrote (every process)."""

    def validation_metrics(self) -> dict[str, float]:
        """Numbers measured at each validation (and before the first step), logged with that
        step's metrics (``rg-lcd``: the proxy's held-out accuracy). Main process."""
        return {}

    # ================================================================ building blocks

    def build_backbone(self, device: torch.device, dtype: torch.dtype) -> Any:
        """The teacher backbone (frozen parts on ``device`` in ``dtype``)."""
        from ..plugins import get_host

        cfg = self.config
        vae = ({"pretrained_vae_model_name_or_path": cfg.pretrained_vae_model_name_or_path}
               if cfg.pretrained_vae_model_name_or_path else {})
        return get_host().get("backbone", cfg.backbone).build(
            pretrained_model_name_or_path=cfg.pretrained_teacher_model, revision=cfg.revision,
            variant=cfg.variant, dtype=str(dtype).replace("torch.", ""), device=str(device),
            **vae, **cfg.backbone_params)

    def build_solver(self, backbone: Any) -> Any:
        """The consistency solver on the teacher's schedule (a built one must be on it)."""
        from ..plugins import get_host

        cfg = self.config
        solver = self.components.get("solver")
        if solver is None:
            return get_host().get("solver", cfg.solver).build(
                alphas_cumprod=backbone.schedule, num_ddim_timesteps=cfg.num_ddim_timesteps,
                **cfg.solver_params)
        if solver.num_ddim_timesteps != cfg.num_ddim_timesteps:
            raise ConfigError(f"solver: the built solver has num_ddim_timesteps "
                              f"{solver.num_ddim_timesteps}, the config {cfg.num_ddim_timesteps}; "
                              "build it with the same value or set num_ddim_timesteps")
        teacher = backbone.alphas_cumprod.detach().double().cpu()
        own = torch.as_tensor(solver.alphas_cumprod).detach().double().cpu()
        if own.shape != teacher.shape or not torch.allclose(own, teacher, atol=1e-6):
            raise ConfigError("solver: the built solver's alphas_cumprod is not the teacher's "
                              "noise schedule; build it with alphas_cumprod=backbone.alphas_cumprod")
        return solver

    def build_student(self, backbone: Any) -> nn.Module:
        """The student: the teacher UNet with the guidance embedding (``unet_time_cond_proj_dim``),
        with LoRA adapters in LoRA mode."""
        cfg = self.config
        student = backbone.build_student(time_cond_proj_dim=cfg.unet_time_cond_proj_dim)
        if cfg.use_lora:
            student = backbone.add_lora(student, rank=cfg.lora_rank, alpha=cfg.lora_alpha,
                                        target_modules=cfg.lora_target_modules)
        return student

    def build_loader(self, accelerator: Any, backbone: Any) -> Any:
        """This process's shard of the training data (a resumable, infinite loader)."""
        from ..data.specs import build_training_loader

        cfg = self.config
        seed = cfg.dataloader_seed if cfg.dataloader_seed is not None else (cfg.seed or 0)
        return build_training_loader(cfg.train_shards_path_or_url, resolution=cfg.resolution,
                            batch_size=cfg.train_batch_size, seed=seed,
                            rank=accelerator.process_index, world_size=accelerator.num_processes,
                            center_crop=cfg.center_crop, random_flip=cfg.random_flip,
                            num_workers=cfg.dataloader_num_workers,
                            vae_scaling_factor=backbone.vae_scaling_factor)

    @property
    def hyper(self) -> LCDHyper:
        """The LCD step's numbers, from the config."""
        cfg = self.config
        return LCDHyper(w_min=cfg.w_min, w_max=cfg.w_max,
                        time_cond_proj_dim=cfg.unet_time_cond_proj_dim, loss_type=cfg.loss_type,
                        huber_c=cfg.huber_c, timestep_scaling=cfg.timestep_scaling_factor,
                        batched_teacher=cfg.batched_teacher_call)

    # ================================================================ setup

    def setup(self) -> None:
        """Build the accelerator, models, optimiser, data; resume if asked. Idempotent."""
        if getattr(self, "accelerator", None) is not None:
            return
        from accelerate.utils import set_seed

        cfg = self.config
        check_output_dir(self.output_dir, cfg.resume_from_checkpoint, cfg.overwrite_output_dir)
        acc = self.accelerator = build_accelerator(
            output_dir=self.output_dir, mixed_precision=cfg.mixed_precision,
            gradient_accumulation_steps=cfg.gradient_accumulation_steps, report_to=cfg.report_to,
            train_batch_size=cfg.train_batch_size, max_grad_norm=cfg.max_grad_norm)
        if cfg.seed is not None:
            set_seed(cfg.seed)  # python, numpy, torch: identical student init on every rank
        clear_for_overwrite(acc, self.output_dir, cfg.overwrite_output_dir)

        backbone = self.backbone = self.build_backbone(acc.device, weight_dtype(cfg.mixed_precision))
        backbone.configure(resolution=cfg.resolution)
        self.solver = self.build_solver(backbone)

        student = self.build_student(backbone)
        if cfg.use_lora:
            self.target = None  # the online student under no_grad (see module docstring)
        else:
            self.target = copy.deepcopy(student).requires_grad_(False).to(acc.device)
        if cfg.gradient_checkpointing:
            student.enable_gradient_checkpointing()
        student.train()
        if cfg.channels_last:
            for unet in (student, self.target, backbone.unet):
                if unet is not None:
                    unet.to(memory_format=torch.channels_last)
        if cfg.compile:
            compile_modules((student, self.target, backbone.unet), cfg.compile_backend,
                            cfg.compile_mode, acc.device)

        optimizer = build_optimizer(
            student.parameters(), learning_rate=cfg.learning_rate,
            betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.adam_weight_decay,
            eps=cfg.adam_epsilon, use_8bit_adam=cfg.use_8bit_adam)
        # accelerate steps a prepared scheduler once per process per optimiser step (diffusers'
        # scripts scale the same way)
        lr_scheduler = build_lr_scheduler(
            cfg.lr_scheduler, optimizer, warmup_steps=cfg.lr_warmup_steps * acc.num_processes,
            total_steps=cfg.max_train_steps * acc.num_processes)
        self.student, self.optimizer, self.lr_scheduler = acc.prepare(student, optimizer, lr_scheduler)
        if self.target is not None:
            # DDP/DeepSpeed broadcast rank 0's weights at wrap time; start every rank's target
            # from those (matters when no seed makes the new guidance embedding's init agree)
            self.target.load_state_dict(self.unwrapped_student.state_dict())
        # target <- mu target + (1 - mu) theta over tensor lists built once (loads are in place)
        self.ema = (EMAUpdater(self.target, self.unwrapped_student) if self.target is not None
                    else None)

        self.setup_extra(acc)

        self.loader = self.build_loader(acc, backbone)
        base_seed = cfg.seed if cfg.seed is not None else torch.initial_seed()
        self.generator = torch.Generator().manual_seed(
            (base_seed * 1_000_003 + acc.process_index) % 2**63)
        self.global_step = 0

        checkpoint = resolve_resume(cfg.resume_from_checkpoint, self.output_dir)
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)
        elif cfg.resume_from_checkpoint:
            acc.print(f"resume_from_checkpoint={cfg.resume_from_checkpoint}: no checkpoint in "
                      f"{self.output_dir}; starting a new run")
        self.batches: Iterator[dict[str, Any]] = iter(self.loader)
        write_run_config(acc, cfg, self.output_dir)  # every check has passed
        self.metrics_log = start_logging(acc, cfg, self.output_dir, self.global_step)

    @property
    def unwrapped_student(self) -> nn.Module:
        """The student module without DDP/DeepSpeed wrappers."""
        from accelerate.utils import DistributedType

        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            return self.accelerator.unwrap_model(self.student)
        # accelerate's unwrap_model imports deepspeed whenever it is installed, which prints
        # "Setting accelerator to CPU" in every run that does not use it
        from ..models import unwrap_model

        return unwrap_model(self.student)

    @property
    def target_network(self) -> nn.Module:
        """The EMA target (full fine-tuning) or the online student (LoRA)."""
        return self.target if self.target is not None else self.unwrapped_student

    # ================================================================ one step

    def encode_batch(self, batch: dict[str, Any]) -> tuple[torch.Tensor, Conditioning, Conditioning]:
        """Scaled latents ``z0``, the prompts' and the empty prompt's conditioning (no grad, fp32)."""
        device = self.accelerator.device
        if "latents" in batch:
            latents = batch["latents"].to(device=device, dtype=torch.float32)
        else:
            latents = self.backbone.encode_images(batch["pixel_values"].to(device),
                                                  generator=self.generator).float()
        cond = self.backbone.encode_prompts(batch["captions"]).float()
        uncond = self.backbone.empty_conditioning(latents.shape[0]).float()
        return latents, cond, uncond

    def forward(self, batch: dict[str, Any]) -> StepOutputs:
        """``lcd_forward`` on one batch with this run's models and generator."""
        latents, cond, uncond = self.encode_batch(batch)
        return lcd_forward(
            backbone=self.backbone, solver=self.solver, student=self.student,
            target=self.target_network, latents=latents, cond=cond, uncond=uncond,
            captions=batch["captions"], hyper=self.hyper,
            generator=self.generator, autocast=self.accelerator.autocast,
            global_step=self.global_step)

    def train_step(self) -> dict[str, float]:
        """One optimiser step (``gradient_accumulation_steps`` micro-batches); returns metrics.

        Nothing in the step reads a value back to the host: the NaN/inf checks (of each loss
        term, and inside the RMs) are recorded on the device and read, with every metric, in
        one transfer at the end (:mod:`rewardkit.checks`). A failed check raises there, after
        this step's optimiser update but before anything of it is logged or saved.
        """
        acc, cfg = self.accelerator, self.config
        totals: dict[str, torch.Tensor] = {}
        step_number = self.global_step + 1
        with deferred() as checks:
            for _ in range(cfg.gradient_accumulation_steps):
                batch = next(self.batches)
                with acc.accumulate(self.student):
                    step = self.forward(batch)
                    terms = {"lcd_loss": step.lcd_loss, **self.extra_losses(step)}
                    for name, value in terms.items():
                        require(nonfinite_count(value), _not_finite(step_number, name),
                                TrainingError)
                    loss = sum(terms.values())
                    acc.backward(loss)
                    if acc.sync_gradients:
                        acc.clip_grad_norm_(self.student.parameters(), cfg.max_grad_norm)
                    self.optimizer.step()
                    self.lr_scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                for name, value in terms.items():
                    value = value.detach().float() / cfg.gradient_accumulation_steps
                    totals[name] = totals[name] + value if name in totals else value
            # target <- mu target + (1 - mu) theta, once per optimiser step
            if self.ema is not None:
                self.ema.update(cfg.ema_decay)
            step.global_step = step_number
            metrics: dict[str, Any] = {**totals, **self.after_optimizer_step(step)}
            metrics = checks.read(metrics, reduce=self._reduce,
                                  processes=self.accelerator.num_processes)
        metrics["lr"] = float(self.lr_scheduler.get_last_lr()[0])
        return metrics

    def _reduce(self, values: torch.Tensor) -> torch.Tensor:
        """The mean over processes (identity on one process)."""
        if self.accelerator.num_processes == 1:
            return values
        return self.accelerator.reduce(values, reduction="mean")

    # ================================================================ checkpoints

    def save_checkpoint(self) -> Path:
        """Write ``checkpoint-{step}`` atomically (every process calls this)."""
        acc = self.accelerator

        def rank_files(folder: Path) -> None:
            save_rank_state(folder, acc.process_index, {
                "generator": self.generator.get_state(),
                "loader": self.loader.state_dict(),
            })

        def main_files(folder: Path) -> None:
            from safetensors.torch import save_file

            if self.target is not None:
                save_file({k: v.detach().contiguous().cpu()
                           for k, v in self.target.state_dict().items()},
                          str(folder / TARGET_WEIGHTS))
            extra = self.extra_state_dict()
            if extra:
                save_state(extra, folder, EXTRA_STATE)
            self.save_extra(folder)

        return save_checkpoint(acc, self.output_dir, self.global_step, rank_files, main_files,
                               {"world_size": acc.num_processes},
                               total_limit=self.config.checkpoints_total_limit)

    def load_checkpoint(self, checkpoint: Path) -> None:
        """Restore student, optimiser, LR schedule, RNGs, target, data position and extensions."""
        acc = self.accelerator
        with restoring(checkpoint):  # an unreadable file's error names an earlier checkpoint
            state = load_checkpoint(acc, checkpoint)
            if state.get("world_size", acc.num_processes) != acc.num_processes:
                logger.warning("checkpoint %s was written by %s processes, resuming with %s",
                               checkpoint, state.get("world_size"), acc.num_processes)
            rank_state = load_rank_state(checkpoint, acc.process_index)
            self.generator.set_state(rank_state["generator"])
            self.loader.load_state_dict(rank_state["loader"])
            if self.target is not None:
                self.target.load_state_dict(load_tensor_file(checkpoint / TARGET_WEIGHTS))
            if self.extra_state_dict():  # only a recipe with extra state reads it
                self.load_extra_state_dict(self._read_extra_state(checkpoint))
            self.load_extra(checkpoint)
            self.global_step = int(state["global_step"])
            check_resume_step(checkpoint, self.global_step, self.config.max_train_steps,
                              "max_train_steps")
        acc.print(f"resumed from {checkpoint} at step {self.global_step}")

    @staticmethod
    def _read_extra_state(checkpoint: Path) -> dict[str, Any]:
        if has_state(checkpoint, EXTRA_STATE):
            return load_state(checkpoint, EXTRA_STATE)
        legacy = checkpoint / f"{EXTRA_STATE}.pt"  # written by an older rewardkit
        if legacy.is_file():
            return load_legacy_torch_file(legacy)
        raise ConfigError(f"resume_from_checkpoint: '{checkpoint}' has no {EXTRA_STATE}.json "
                          "(the state this recipe keeps beside the model); resume from a "
                          "checkpoint this recipe wrote")

    # ================================================================ validation and the run

    def validate(self) -> Path | None:
        """The validation grid of the current student (main process; others wait)."""
        cfg, acc = self.config, self.accelerator
        path = None
        if acc.is_main_process and cfg.validation_prompts:
            path = validation_grid(
                self.backbone, self.unwrapped_student, cfg.validation_prompts,
                cfg.validation_seeds, cfg.validation_inference_steps,
                self.output_dir / "validation" / f"step-{self.global_step}.png",
                guidance_scale=cfg.validation_guidance_scale,
                time_cond_proj_dim=cfg.unet_time_cond_proj_dim,
                original_inference_steps=cfg.num_ddim_timesteps,
                timestep_scaling=cfg.timestep_scaling_factor)
            log_validation_images(acc, path, self.global_step)
        acc.wait_for_everyone()
        return path

    def log(self, metrics: dict[str, float]) -> None:
        """metrics.jsonl and the accelerate trackers (main process)."""
        if self.accelerator.is_main_process:
            self.metrics_log.append(self.global_step, metrics)
            if self.accelerator.log_with:
                self.accelerator.log(metrics, step=self.global_step)

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
        """``backbone.save_pipeline`` of ``student``, with the EMA ``target`` for a backbone
        that takes one (a third-party backbone may not)."""
        import inspect

        takes = inspect.signature(backbone.save_pipeline).parameters
        extra = ({"target": target} if "target" in takes or any(
            p.kind is p.VAR_KEYWORD for p in takes.values()) else {})
        return backbone.save_pipeline(student, path,
                                      original_inference_steps=self.config.num_ddim_timesteps,
                                      timestep_scaling=self.config.timestep_scaling_factor, **extra)

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

    def run(self, progress: bool = True) -> Path:
        """Train to ``max_train_steps`` (resuming if asked), save the pipeline; return ``output_dir``."""
        self.setup()
        cfg, acc = self.config, self.accelerator
        if self.global_step == 0 and acc.is_main_process:
            initial = self.validation_metrics()
            if initial:
                self.log(initial)
        with TrainingProgress(cfg.max_train_steps, self.global_step,
                              enabled=progress and acc.is_main_process) as bar:
            while self.global_step < cfg.max_train_steps:
                started = time.perf_counter()
                with naming_out_of_memory(self.global_step + 1, cfg):
                    metrics = self.train_step()
                self.global_step += 1
                metrics["step_time"] = time.perf_counter() - started
                bar.update(self.global_step, metrics)
                if cfg.validation_steps and self.global_step % cfg.validation_steps == 0:
                    self.validate()
                    if acc.is_main_process:
                        metrics.update(self.validation_metrics())
                self.log(metrics)  # before the checkpoint: a resumed run keeps this step's row
                if cfg.checkpointing_steps and self.global_step % cfg.checkpointing_steps == 0:
                    self.save_checkpoint()
        self.save_final()
        if acc.is_main_process:
            skipped = sum(getattr(self.loader, "skipped", {}).values())
            if skipped:
                acc.print(self.loader.report())
        acc.end_training()
        return self.output_dir
