"""The one training loop every training recipe runs on: everything that is not the algorithm.

A recipe subclasses :class:`TrainingLoop`, names itself (``name``) and its config (``Config``,
extending :class:`~rewardkit.training.config.TrainingConfig`), and implements ``build_models``
and ``losses``; the other hooks, in the class's first section, are optional. The loop owns the
rest: accelerate (data parallel, DeepSpeed, mixed precision), seeding, the teacher backbone, the
optimiser and its schedule, the data (:attr:`TrainingLoop.batch_kind`), accumulation and
clipping, the deferred non-finite checks, metrics and the progress line, validation, the guard,
atomic checkpoints with exact resume and the final export. ``docs/training.md`` ("Writing a
recipe") walks through it.

Why a base class and not a loop object the recipe is handed: the recipe's state (its models, the
last step's outputs) then lives on ``self``, as in trl's trainers, and an algorithm is a few short
methods rather than a set of callbacks.
"""

from __future__ import annotations

import logging
import time
from abc import abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator

import torch
from torch import nn

from ..checks import deferred, nonfinite_count, require
from ..distributed import average_gradients, broadcast_flag
from ..errors import ConfigError
from ..progress import ProgressBar
from ..recipes.base import Recipe
from .checkpoint import (check_resume_step, load_rank_state, read_trainer_state, resolve_resume,
                         restoring, save_checkpoint, save_rank_state)
from .config import TrainingConfig
from .errors import TrainingError, naming_out_of_memory
from .guard import HackingGuard
from .metrics import start_logging, write_run_config
from .optim import build_lr_scheduler, build_optimizer
from .output_dir import check_output_dir, clear_for_overwrite
from .remote_failures import naming_the_step_of_remote_failures
from .runtime import build_accelerator, step_autocast, uses_deepspeed, weight_dtype
from .safe_state import has_state, load_state, save_state, save_tensor_file
from .train_state import load_train_state, save_train_state

logger = logging.getLogger(__name__)

#: The recipe's own checkpoint state (:meth:`TrainingLoop.checkpoint_state`), as
#: ``extra_state.safetensors`` + ``extra_state.json`` (:mod:`rewardkit.training.safe_state`).
RECIPE_STATE = "extra_state"
#: The guard's measurements so far, saved with each checkpoint (main process).
GUARD_STATE = "guard_state"
#: The teacher's samples the guard's Frechet distance compares with, kept in ``output_dir``.
GUARD_REFERENCE = "guard_reference"
#: What a batch can hold (:attr:`TrainingLoop.batch_kind`).
BATCH_KINDS = ("images", "prompts")


def _not_finite(step: int, term: str):
    def message(_: int, values: dict[str, float]) -> str:
        value = values.get(term, float("nan"))
        return (f"step {step}: {term} is not finite ({value}); stopping with the checkpoints "
                "written so far intact")
    return message


def _no_guard_images(recipe: str) -> str:
    return (f"recipe '{recipe}' does not sample images, so the reward-hacking guard has nothing "
            "to measure; drop gold_panel and guard_fd_metric")


class TrainingLoop(Recipe):
    """The training loop; a recipe subclasses it and implements its algorithm's hooks."""

    Config: ClassVar[type] = TrainingConfig
    #: What a batch holds: ``"images"`` (``captions`` plus ``pixel_values`` in [-1, 1], or
    #: pre-encoded ``latents`` when the data is a latent-shard folder) or ``"prompts"``
    #: (``captions`` only; the data is a prompt file or a registered prompt set).
    batch_kind: ClassVar[str] = "images"
    #: Metrics shown on the progress line (``step_time`` shows as s/step).
    progress_keys: ClassVar[tuple[str, ...]] = ("lr", "step_time")
    #: Wrap the trained module for data parallelism (DDP / DeepSpeed). A recipe that calls its
    #: module through methods other than ``forward`` (which DDP's gradient sync does not see)
    #: sets False: the loop then averages its gradients across processes itself.
    wrap_model: ClassVar[bool] = True
    #: Config keys a checkpoint must have been written with to be resumed (they shape what it
    #: holds: the trained module, the proxy, the replay buffer); each checkpoint records them
    #: and a resume with another value is refused naming the key. Keys a config lacks, and
    #: components passed built, are skipped.
    resume_keys: ClassVar[tuple[str, ...]] = (
        "backbone", "backbone_params", "pretrained_student", "unet_time_cond_proj_dim",
        "use_lora", "lora_rank", "lora_alpha", "lora_target_modules", "proxy", "proxy_params",
        "proxy_replay_size")

    def __init__(self, config: TrainingConfig, components: dict[str, Any] | None = None) -> None:
        super().__init__(config, components)
        self.config: TrainingConfig = config
        self.output_dir = Path(config.output_dir)
        self.global_step = 0
        self.train_seconds = 0.0  # time of the training steps so far, on train_time_clock
        self.expert_images_before = 0  # images the expert scored before a resume
        self.accelerator: Any = None

    # ================================================================ the algorithm's hooks

    @abstractmethod
    def build_models(self) -> nn.Module:
        """Build what the algorithm needs on :attr:`backbone` (on :attr:`device`); return the
        module the optimiser trains (it is then wrapped for data parallelism: reach it as
        :attr:`model`, unwrapped as :attr:`unwrapped_model`)."""

    def optimizer_parameters(self, module: nn.Module) -> Iterable[nn.Parameter]:
        """The parameters the optimiser steps and the gradient clip sees."""
        return module.parameters()

    def after_prepare(self) -> None:
        """Build what depends on the wrapped model's final weights (an EMA copy) and the rest
        of the algorithm's models (RMs, a proxy and its optimiser)."""

    def next_batch(self) -> dict[str, Any]:
        """The next micro-batch (a recipe whose step needs no data, e.g. a stage that trains on
        a saved set, returns ``{}`` without reading any)."""
        return next(self.batches)

    @abstractmethod
    def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The algorithm's named scalar loss terms on one micro-batch; the loop sums them for
        backward and logs each (averaged over accumulation steps and processes)."""

    def after_step(self) -> dict[str, torch.Tensor | float]:
        """Work after the optimiser step (an EMA update, a proxy update); metrics to log, as
        numbers or 0-d tensors left on the device (the step reads them all at once)."""
        return {}

    def checkpoint_state(self) -> dict[str, Any]:
        """State saved with every checkpoint by the main process: nested dicts, lists, numbers,
        strings and tensors (safetensors + JSON, never pickled). Non-empty: it is read back on
        resume by :meth:`restore_checkpoint_state`."""
        return {}

    def restore_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`checkpoint_state` returned."""

    def save_files(self, folder: Path) -> None:
        """Write files of the recipe's own into a checkpoint folder (main process, before the
        folder is renamed into place)."""

    def load_files(self, folder: Path) -> None:
        """Read the files :meth:`save_files` wrote (every process)."""

    def validation_metrics(self) -> dict[str, float]:
        """Numbers measured before the first step and at each validation (main process)."""
        return {}

    def initial_metrics(self) -> dict[str, Any]:
        """The row logged at step 0 of a new run (default: :meth:`validation_metrics`)."""
        return self.validation_metrics()

    def validation_due(self, step: int) -> bool:
        """Validate after optimiser step ``step``? (default: every ``validation_steps``)."""
        every = self.config.validation_steps
        return bool(every) and step % every == 0

    @property
    def total_steps(self) -> int:
        """Optimiser steps of the run (default: ``max_train_steps``)."""
        return self.config.max_train_steps

    def validate(self) -> Path | None:
        """Validation images every ``validation_steps`` (main process); their path."""
        return None

    def guard_images(self, prompts: list[str], seeds: list[int], steps: int) -> torch.Tensor:
        """The reward-hacking guard's fixed samples of the trained model (main process): every
        prompt at every seed, prompt-major, ``[P * S, 3, H, W]`` in [0, 1]. A recipe whose
        model samples images implements it; the guard is refused otherwise."""
        raise ConfigError(_no_guard_images(self.name))

    def trained_reward_model(self) -> Any:
        """The RM the recipe trains on (the guard logs its score of the fixed samples as
        ``guard_reward``); None when there is none."""
        return None

    def export(self, folder: Path) -> Path:
        """The trained model as it is now, in ``folder`` (``keep_best``'s copy; main process).
        Default: its state as ``folder/model.safetensors``."""
        Path(folder).mkdir(parents=True, exist_ok=True)
        return save_tensor_file(self.unwrapped_model.state_dict(), folder / "model.safetensors")

    def save_final(self) -> Path:
        """The recipe's output after the last step (the loop calls it on every process; write
        on the main one). Default: the trained module's state as ``output_dir/model.safetensors``."""
        path = self.output_dir / "model.safetensors"
        if self.accelerator.is_main_process:
            save_tensor_file(self.unwrapped_model.state_dict(), path)
        self.accelerator.wait_for_everyone()
        return path

    # ================================================================ what the loop offers

    @property
    def device(self) -> torch.device:
        """This process's device."""
        return self.accelerator.device

    def print(self, message: str) -> None:
        """Print ``message`` once (on the main process)."""
        self.accelerator.print(message)

    def on_main_process(self, work: Callable[[], Any]) -> Any:
        """Run ``work`` on the main process alone while the others wait (building a set once
        and saving it, for every process to read after); ``work``'s result there, else None."""
        result = work() if self.accelerator.is_main_process else None
        self.accelerator.wait_for_everyone()
        return result

    @property
    def weight_dtype(self) -> torch.dtype:
        """The dtype frozen models run in (``mixed_precision``; fp32 when off)."""
        return weight_dtype(self.config.mixed_precision)

    @property
    def unwrapped_model(self) -> nn.Module:
        """The trained module without DDP/DeepSpeed wrappers."""
        if uses_deepspeed(self.accelerator):
            return self.accelerator.unwrap_model(self.model)
        # accelerate's unwrap_model imports deepspeed whenever it is installed, which prints
        # "Setting accelerator to CPU" in every run that does not use it
        from ..models import unwrap_model

        return unwrap_model(self.model)

    def build_backbone(self, device: torch.device, dtype: torch.dtype) -> Any:
        """The teacher backbone the config names (frozen parts on ``device`` in ``dtype``)."""
        from ..plugins import get_host

        cfg = self.config
        vae = ({"pretrained_vae_model_name_or_path": cfg.pretrained_vae_model_name_or_path}
               if cfg.pretrained_vae_model_name_or_path else {})
        return get_host().get("backbone", cfg.backbone).build(
            pretrained_model_name_or_path=cfg.pretrained_teacher_model, revision=cfg.revision,
            variant=cfg.variant, dtype=str(dtype).replace("torch.", ""), device=str(device),
            **vae, **cfg.backbone_params)

    def build_loader(self) -> Any:
        """This process's shard of the training data (resumable, infinite), of
        :attr:`batch_kind`."""
        cfg, acc = self.config, self.accelerator
        seed = cfg.dataloader_seed if cfg.dataloader_seed is not None else (cfg.seed or 0)
        if self.batch_kind == "prompts":
            from ..data.prompts import build_prompt_loader

            return build_prompt_loader(cfg.train_shards_path_or_url,
                                       batch_size=cfg.train_batch_size, seed=seed,
                                       rank=acc.process_index, world_size=acc.num_processes)
        if self.batch_kind != "images":
            raise ConfigError(f"recipe '{self.name}': batch_kind must be one of "
                              f"{', '.join(BATCH_KINDS)}, got {self.batch_kind!r}")
        from ..data.specs import build_training_loader

        return build_training_loader(cfg.train_shards_path_or_url, resolution=cfg.resolution,
                                     batch_size=cfg.train_batch_size, seed=seed,
                                     rank=acc.process_index, world_size=acc.num_processes,
                                     center_crop=cfg.center_crop, random_flip=cfg.random_flip,
                                     num_workers=cfg.dataloader_num_workers,
                                     vae_scaling_factor=self.backbone.vae_scaling_factor)

    def build_lr_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        """The config's LR schedule (``lr_scheduler``, ``lr_warmup_steps``) over the run."""
        cfg, processes = self.config, self.accelerator.num_processes
        # accelerate steps a prepared scheduler once per process per optimiser step (diffusers'
        # scripts scale the same way)
        return build_lr_scheduler(cfg.lr_scheduler, optimizer,
                                  warmup_steps=cfg.lr_warmup_steps * processes,
                                  total_steps=self.total_steps * processes)

    def build_optimizer(self, parameters: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        """AdamW (or 8-bit AdamW) with the config's learning rate, betas, decay and epsilon."""
        cfg = self.config
        return build_optimizer(parameters, learning_rate=cfg.learning_rate,
                               betas=(cfg.adam_beta1, cfg.adam_beta2),
                               weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon,
                               use_8bit_adam=cfg.use_8bit_adam)

    # ================================================================ setup

    def setup(self) -> None:
        """Build the accelerator, models, optimiser, data; resume if asked. Idempotent."""
        if self.accelerator is not None:
            return
        from accelerate.utils import set_seed

        cfg = self.config
        check_output_dir(self.output_dir, cfg.resume_from_checkpoint, cfg.overwrite_output_dir)
        acc = self.accelerator = build_accelerator(
            output_dir=self.output_dir, mixed_precision=cfg.mixed_precision,
            gradient_accumulation_steps=cfg.gradient_accumulation_steps, report_to=cfg.report_to,
            train_batch_size=cfg.train_batch_size, max_grad_norm=cfg.max_grad_norm)
        #: the autocast of the step's model calls (under DeepSpeed with bf16/fp16, where
        #: accelerate's own is off and the engine has cast the model, torch's in that dtype)
        self.autocast = step_autocast(acc)
        if cfg.seed is not None:
            set_seed(cfg.seed)  # python, numpy, torch: identical initialisation on every rank
        clear_for_overwrite(acc, self.output_dir, cfg.overwrite_output_dir)

        self.backbone = self.build_backbone(acc.device, self.weight_dtype)
        self.backbone.configure(resolution=cfg.resolution)
        module = self.build_models()
        optimizer = self.build_optimizer(self.optimizer_parameters(module))
        lr_scheduler = self.build_lr_scheduler(optimizer)
        if self.wrap_model:
            self.model, self.optimizer, self.lr_scheduler = acc.prepare(module, optimizer,
                                                                        lr_scheduler)
        else:
            if uses_deepspeed(acc):
                raise ConfigError(f"recipe '{self.name}' trains a module DeepSpeed cannot wrap; "
                                  "launch it without DeepSpeed (plain data parallelism)")
            self.model = module
            self.optimizer, self.lr_scheduler = acc.prepare(optimizer, lr_scheduler)
        self.after_prepare()
        self.guard = None
        if cfg.guard_enabled and acc.is_main_process:
            with torch.random.fork_rng(devices=[]):  # the training streams stay untouched
                self.guard = self.build_guard()
        self.hacked: str | None = None

        self.loader = self.build_loader()
        base_seed = cfg.seed if cfg.seed is not None else torch.initial_seed()
        self.generator = torch.Generator().manual_seed(
            (base_seed * 1_000_003 + acc.process_index) % 2**63)
        self.global_step, self.train_seconds, self.expert_images_before = 0, 0.0, 0

        checkpoint = resolve_resume(cfg.resume_from_checkpoint, self.output_dir)
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)
        elif cfg.resume_from_checkpoint:
            acc.print(f"resume_from_checkpoint={cfg.resume_from_checkpoint}: no checkpoint in "
                      f"{self.output_dir}; starting a new run")
        self.batches: Iterator[dict[str, Any]] = self.prefetching(self.loader)
        write_run_config(acc, cfg, self.output_dir)  # every check has passed
        self.metrics_log = start_logging(acc, cfg, self.output_dir, self.global_step)

    def prefetching(self, loader: Any) -> Iterator[dict[str, Any]]:
        """The batches of ``loader`` the steps take: read ``dataloader_prefetch`` batches ahead
        by a background thread (pinned on CUDA, for non-blocking copies), or, at 0, inside the
        step."""
        depth = self.config.dataloader_prefetch
        if not depth:
            return iter(loader)
        from ..data.prefetch import Prefetcher

        return Prefetcher(loader, depth=depth, pin_memory=self.device.type == "cuda",
                          device=self.device)

    def data_position(self) -> dict[str, Any]:
        """This rank's data position after the batches the steps took (what a checkpoint
        saves): the prefetcher's when batches are read ahead, else the loader's."""
        from ..data.prefetch import Prefetcher

        source = self.batches if isinstance(self.batches, Prefetcher) else self.loader
        return source.state_dict()

    # ================================================================ one step

    def train_step(self) -> dict[str, float]:
        """One optimiser step (``gradient_accumulation_steps`` micro-batches); returns metrics.

        Nothing in the step reads a value back to the host: the non-finite checks (of each loss
        term, and inside the RMs) are recorded on the device and read, with every metric, in
        one transfer at the end (:mod:`rewardkit.checks`). A failed check raises there, after
        this step's optimiser update but before anything of it is logged or saved.
        """
        acc, cfg = self.accelerator, self.config
        totals: dict[str, torch.Tensor] = {}
        step_number = self.global_step + 1
        with deferred() as checks:
            for _ in range(cfg.gradient_accumulation_steps):
                batch = self.next_batch()
                with acc.accumulate(self.model):
                    terms = self.losses(batch)
                    for name, value in terms.items():
                        require(nonfinite_count(value), _not_finite(step_number, name),
                                TrainingError)
                    loss = sum(terms.values())
                    acc.backward(loss)
                    if acc.sync_gradients:
                        if not self.wrap_model:
                            average_gradients(list(self.optimizer_parameters(self.model)))
                        acc.clip_grad_norm_(self.optimizer_parameters(self.model),
                                            cfg.max_grad_norm)
                    self.optimizer.step()
                    self.lr_scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                for name, value in terms.items():
                    value = value.detach().float() / cfg.gradient_accumulation_steps
                    totals[name] = totals[name] + value if name in totals else value
            metrics: dict[str, Any] = {**totals, **self.after_step()}
            labels = {k: v for k, v in metrics.items() if isinstance(v, str)}
            metrics = checks.read({k: v for k, v in metrics.items() if k not in labels},
                                  reduce=self._reduce, processes=acc.num_processes)
        # the rate after this step's scheduler step, as diffusers' training scripts log it
        metrics["lr"] = float(self.lr_scheduler.get_last_lr()[0])
        return {**labels, **metrics}

    def _reduce(self, values: torch.Tensor) -> torch.Tensor:
        """The mean over processes (identity on one process)."""
        if self.accelerator.num_processes == 1:
            return values
        return self.accelerator.reduce(values, reduction="mean")

    # ================================================================ the reward-hacking guard

    def build_guard(self) -> HackingGuard:
        """The guard of the config's panel, FD metric and fixed prompts (main process); the
        teacher's reference samples are made once and kept in ``output_dir``."""
        from ..plugins import get_host
        from ..rewards.build import build_expert

        cfg = self.config
        if type(self).guard_images is TrainingLoop.guard_images:
            raise ConfigError(_no_guard_images(self.name))
        panel = {name: build_expert(name, cfg.gold_panel_params.get(name, {}), device=self.device,
                                    mixed_precision=cfg.mixed_precision)
                 for name in cfg.gold_panel}
        metric = reference = None
        if cfg.guard_fd_metric:
            metric = get_host().get("metric", cfg.guard_fd_metric).build()
            reference = self.guard_reference()
        return HackingGuard(cfg.guard_prompts, cfg.guard_seeds, panel,
                            trained=self.trained_reward_model(), fd_metric=metric,
                            reference=reference, patience=cfg.hacking_patience)

    def guard_reference(self) -> torch.Tensor:
        """The teacher's samples of the guard's prompts and seeds (cached in ``output_dir``)."""
        from .validation import teacher_samples

        cfg = self.config
        identity = {"teacher": cfg.pretrained_teacher_model, "prompts": list(cfg.guard_prompts),
                    "seeds": list(cfg.guard_seeds), "steps": cfg.guard_teacher_steps,
                    "resolution": cfg.resolution}
        if has_state(self.output_dir, GUARD_REFERENCE):
            cached = load_state(self.output_dir, GUARD_REFERENCE)
            if cached.get("identity") == identity:
                return cached["images"]
        images = teacher_samples(cfg.pretrained_teacher_model, cfg.guard_prompts,
                                 cfg.guard_seeds, steps=cfg.guard_teacher_steps,
                                 resolution=cfg.resolution, device=self.device)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        save_state({"identity": identity, "images": images}, self.output_dir, GUARD_REFERENCE)
        return images

    def guard_measure(self) -> dict[str, Any]:
        """The guard's numbers at this validation (main process); ``keep_best`` exports a new
        best; the first verdict of reward hacking is said (and logged as ``guard_verdict``)
        and, with ``stop_on_hacking``, ends the run after this step."""
        if self.guard is None:
            return {}
        cfg = self.config
        with torch.random.fork_rng(devices=[]):
            images = self.guard_images(list(cfg.guard_prompts), list(cfg.guard_seeds),
                                       cfg.guard_inference_steps)
            row: dict[str, Any] = self.guard.measure(self.global_step, images)
        best = self.guard.best()
        if cfg.keep_best and best is not None and best["step"] == self.global_step:
            from ..files import write_aside

            write_aside(self.output_dir / "best", self.export)
            save_state({"step": self.global_step, "gold_panel": best["gold_panel"]},
                       self.output_dir / "best", "guard")
        verdict = self.guard.verdict()
        if verdict and not self.guard.said:
            self.guard.said = True
            row["guard_verdict"] = verdict
            if cfg.keep_best and best is not None:
                verdict += (f"; the best by the gold panel is step {best['step']}, in "
                            f"{self.output_dir / 'best'}")
            if cfg.stop_on_hacking:
                self.hacked = verdict + "; stopping (stop_on_hacking), the output is this step's"
            self.print(self.hacked or verdict)
        return row

    # ================================================================ checkpoints

    def save_checkpoint(self) -> Path:
        """Write ``checkpoint-{step}`` atomically (every process calls this)."""
        acc = self.accelerator

        def rank_files(folder: Path) -> None:
            save_train_state(acc, folder, self.unwrapped_model, self.optimizer, self.lr_scheduler)
            save_rank_state(folder, acc.process_index, {
                "generator": self.generator.get_state(),
                "loader": self.data_position(),
            })

        def main_files(folder: Path) -> None:
            state = self.checkpoint_state()
            if state:
                save_state(state, folder, RECIPE_STATE)
            if self.guard is not None:
                save_state(self.guard.state_dict(), folder, GUARD_STATE)
            self.save_files(folder)

        return save_checkpoint(acc, self.output_dir, self.global_step, rank_files, main_files,
                               {"world_size": acc.num_processes,
                                "train_seconds": self.train_seconds,
                                "expert_images": self.expert_images(),
                                "settings": self.resume_settings()},
                               total_limit=self.config.checkpoints_total_limit)

    def resume_settings(self) -> dict[str, Any]:
        """The values of :attr:`resume_keys` (as JSON) a checkpoint records."""
        import json

        from ..recipes.given import is_given

        cfg = self.config
        return {key: json.loads(json.dumps(getattr(cfg, key), default=str))
                for key in self.resume_keys if hasattr(cfg, key) and not is_given(cfg, key)}

    def check_resume_settings(self, checkpoint: Path, state: dict[str, Any]) -> None:
        """Refuse to resume ``checkpoint`` when it was written with another value of a
        :attr:`resume_keys` key (a checkpoint without the record passes)."""
        recorded = state.get("settings")
        if not isinstance(recorded, dict):
            return
        for key, now in self.resume_settings().items():
            if key in recorded and recorded[key] != now:
                raise ConfigError(
                    f"resume_from_checkpoint: '{checkpoint}' was written with {key} = "
                    f"{json_text(recorded[key])}, this run has {key} = {json_text(now)}; resume "
                    f"with --{key} {json_text(recorded[key])}, or start a new run (another "
                    "--output_dir, or --overwrite_output_dir)")

    def load_checkpoint(self, checkpoint: Path) -> None:
        """Restore the trained module, optimiser, LR schedule, RNGs, data position and the
        recipe's own state and files."""
        acc = self.accelerator
        with restoring(checkpoint):  # an unreadable file's error names an earlier checkpoint
            recorded = read_trainer_state(checkpoint)
        self.check_resume_settings(checkpoint, recorded)  # another setting: no earlier one helps
        with restoring(checkpoint):
            load_train_state(acc, checkpoint, self.unwrapped_model, self.optimizer,
                             self.lr_scheduler)
            state = read_trainer_state(checkpoint)
            if state.get("world_size", acc.num_processes) != acc.num_processes:
                logger.warning("checkpoint %s was written by %s processes, resuming with %s",
                               checkpoint, state.get("world_size"), acc.num_processes)
            rank_state = load_rank_state(checkpoint, acc.process_index)
            self.generator.set_state(rank_state["generator"])
            self.loader.load_state_dict(rank_state["loader"])
            if self.checkpoint_state():  # only a recipe with state of its own reads it
                if not has_state(checkpoint, RECIPE_STATE):
                    raise ConfigError(f"resume_from_checkpoint: '{checkpoint}' has no "
                                      f"{RECIPE_STATE}.json (the state recipe '{self.name}' "
                                      "keeps beside the model); resume from a checkpoint this "
                                      "recipe wrote")
                self.restore_checkpoint_state(load_state(checkpoint, RECIPE_STATE))
            if self.guard is not None and has_state(checkpoint, GUARD_STATE):
                self.guard.load_state_dict(load_state(checkpoint, GUARD_STATE))
            self.load_files(checkpoint)
            self.global_step = int(state["global_step"])
            self.train_seconds = float(state.get("train_seconds", 0.0))
            self.expert_images_before = int(state.get("expert_images", 0))
            check_resume_step(checkpoint, self.global_step, self.total_steps,
                              "max_train_steps")
        acc.print(f"resumed from {checkpoint} at step {self.global_step}")

    # ================================================================ the run

    def log(self, metrics: dict[str, float]) -> None:
        """metrics.jsonl and the accelerate trackers (main process)."""
        if self.accelerator.is_main_process:
            self.metrics_log.append(self.global_step, metrics)
            if self.accelerator.log_with:
                self.accelerator.log(metrics, step=self.global_step)

    def expert_images(self) -> int:
        """Images the trained-on RM (the expert) has scored in this run so far, on this
        process: training, proxy updates and the held-out set (0 without one)."""
        scored = getattr(self.trained_reward_model(), "images_scored", 0)
        return self.expert_images_before + int(scored)

    def budget_left(self) -> float | None:
        """Seconds of ``max_train_minutes`` not yet spent (on ``train_time_clock``), or None
        without a budget: the progress line's ETA is capped by it."""
        budget = self.config.max_train_minutes
        return None if budget is None else 60.0 * budget - self.train_seconds

    def out_of_time(self) -> bool:
        """Whether ``max_train_minutes`` of training steps are spent (the main process's clock
        decides for every process), said once."""
        left = self.budget_left()
        if left is None:
            return False
        spent = broadcast_flag(left <= 0, self.accelerator.device)
        if spent:
            self.print(f"max_train_minutes ({self.config.max_train_minutes:g}) spent after step {self.global_step} "
                       f"({self.train_seconds / 60:.2f} min of training steps, "
                       f"{self.config.train_time_clock} clock); saving the output as it is now")
        return spent

    def run(self, progress: bool = True) -> Path:
        """Train to ``max_train_steps`` (resuming if asked), then :meth:`save_final`; returns
        ``output_dir``."""
        self.setup()
        cfg, acc = self.config, self.accelerator
        total = self.total_steps
        if self.global_step == 0 and acc.is_main_process:
            initial = {**self.initial_metrics(), **self.guard_measure()}
            if initial:
                self.log(initial)
        try:
            with ProgressBar(total, min(self.global_step, total), keys=self.progress_keys,
                                  enabled=progress and acc.is_main_process) as bar:
                while self.global_step < total:
                    started, cpu_started = time.perf_counter(), time.process_time()
                    with naming_out_of_memory(self.global_step + 1, cfg), \
                            naming_the_step_of_remote_failures(self.global_step + 1, self.output_dir):
                        metrics = self.train_step()
                    self.global_step += 1
                    metrics["step_time"] = time.perf_counter() - started
                    self.train_seconds += (metrics["step_time"] if cfg.train_time_clock == "wall"
                                           else time.process_time() - cpu_started)
                    if self.trained_reward_model() is not None:
                        metrics["expert_images"] = self.expert_images()
                    bar.update(self.global_step, metrics, self.budget_left())
                    stop = self.out_of_time()
                    if self.validation_due(self.global_step):
                        if acc.is_main_process:
                            self.validate()
                        acc.wait_for_everyone()
                        if acc.is_main_process:
                            metrics.update({**self.validation_metrics(), **self.guard_measure()})
                        # only the main process measures; every process stops with it
                        stop = stop or (cfg.stop_on_hacking
                                        and broadcast_flag(self.hacked is not None, acc.device))
                    self.log(metrics)  # before the checkpoint: a resumed run keeps this step's row
                    if cfg.checkpointing_steps and self.global_step % cfg.checkpointing_steps == 0:
                        self.save_checkpoint()
                    if stop:
                        break
        finally:
            # stop reading ahead (also when a step fails: the thread and its batches would
            # outlive the run in a Python session); the loader is back at the steps' position
            close = getattr(self.batches, "close", None)
            if close is not None:
                close()
        self.save_final()
        if acc.is_main_process:
            skipped = sum(getattr(self.loader, "skipped", {}).values())
            if skipped:
                acc.print(self.loader.report())
        acc.end_training()
        return self.output_dir


def json_text(value: Any) -> str:
    """A config value as the command line takes it (JSON for lists and mappings)."""
    import json

    if isinstance(value, str):
        return value
    return json.dumps(value)


__all__ = ["BATCH_KINDS", "RECIPE_STATE", "TrainingLoop"]
