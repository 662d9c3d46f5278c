"""Building the ``accelerate.Accelerator`` the way LCD training needs it.

Facts measured with accelerate 1.15 that shape this module (see docs/training.md):

- On a machine without CUDA, a default ``Accelerator()`` under ``torchrun`` starts processes that
  each train *alone* (no gradient all-reduce), silently; and ``accelerate launch --cpu
  --num_processes 2`` starts one process. Real CPU data parallelism needs ``Accelerator(cpu=True)``
  (or ``ACCELERATE_USE_CPU=true``), which makes torchrun ranks join a gloo process group. So we
  pass ``cpu=True`` whenever CUDA is absent.
- ``Accelerator(cpu=True, deepspeed_plugin=...)`` silently drops DeepSpeed for plain DDP, so when
  DeepSpeed is asked for (``ACCELERATE_USE_DEEPSPEED=true``, set by ``accelerate launch`` with a
  DeepSpeed config) we do not pass ``cpu=True``.
- DeepSpeed needs ``train_micro_batch_size_per_gpu`` even though no dataloader goes through
  ``prepare`` (the data loaders are rewardkit's own, sharded by rank); we set it from the config.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any, Callable, ContextManager

import torch

from ..errors import ConfigError

logger = logging.getLogger(__name__)

_TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}


def quiet_deepspeed_autodetect() -> None:
    """Tell DeepSpeed up front that this machine has no CUDA (``DS_ACCELERATOR=cpu``).

    transformers' ``save_pretrained`` and accelerate's ``unwrap_model`` import DeepSpeed
    whenever it is installed, and its accelerator auto-detection then warns "Setting accelerator
    to CPU" in runs that never use DeepSpeed. On a machine with no accelerator at all the
    auto-detection picks the CPU anyway, so setting it changes nothing but the warning; a user's
    own ``DS_ACCELERATOR`` wins.
    """
    if "DS_ACCELERATOR" not in os.environ and not _has_accelerator():
        os.environ["DS_ACCELERATOR"] = "cpu"


def _has_accelerator() -> bool:
    """CUDA, or another device DeepSpeed would detect (XPU, MPS, an NPU or HPU plugin)."""
    if torch.cuda.is_available():
        return True
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        return True
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return True
    return any(importlib.util.find_spec(name) is not None for name in ("torch_npu", "habana_frameworks"))


def requested_zero_stage() -> int | None:
    """The ZeRO stage ``accelerate launch`` asks for (its env vars or DeepSpeed config file)."""
    if not deepspeed_requested():
        return None
    stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    config_file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none")
    if config_file not in ("", "none"):
        import json

        try:
            data = json.loads(Path(config_file).expanduser().read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"DeepSpeed config file '{config_file}' cannot be read as JSON "
                              f"({exc}); fix the file or the accelerate config that names it") from exc
        stage = data.get("zero_optimization", {}).get("stage", stage)
    try:
        return int(stage) if stage not in (None, "", "auto") else None
    except (TypeError, ValueError):
        raise ConfigError(f"DeepSpeed ZeRO stage {stage!r} is not a number; use 0, 1 or 2") from None


def check_distributed_engine() -> None:
    """Refuse, before anything loads, the engines that shard the student's parameters.

    The EMA target update, validation sampling and the final save read the student's weights
    whole on every rank; DeepSpeed ZeRO-3 and FSDP leave each rank a shard (accelerate's
    ``unwrap_model`` then hands back empty ``torch.Size([0])`` tensors).
    """
    stage = requested_zero_stage()
    if stage is not None and stage >= 3:
        raise ConfigError(
            f"DeepSpeed ZeRO stage {stage} is not supported: it shards the student's parameters, "
            "which the EMA target update, validation and saving read whole; use ZeRO stage 2 "
            "(it shards gradients and optimiser state, the bulk of the memory; see "
            "docs/training.md for the memory each mode needs)")
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true", "yes"):
        raise ConfigError(
            "FSDP is not supported: it shards the student's parameters, which the EMA target "
            "update, validation and saving read whole; launch with DeepSpeed ZeRO stage 2 "
            "(accelerate launch --use_deepspeed --zero_stage 2 ...) or plain DDP")


def deepspeed_requested() -> bool:
    """True when ``accelerate launch`` (or the environment) asks for DeepSpeed."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("1", "true", "yes")


def available_trackers(report_to: str) -> list[str]:
    """The trackers of ``report_to`` whose package is installed (others are skipped with a notice)."""
    wanted = list(_TRACKER_PACKAGES) if report_to == "all" else (
        [] if report_to == "none" else [report_to])
    found = []
    for name in wanted:
        if any(importlib.util.find_spec(pkg) is not None for pkg in _TRACKER_PACKAGES[name]):
            found.append(name)
        else:
            logger.warning("report_to=%s: the %s package is not installed, so this run writes no "
                           "%s logs (metrics.jsonl is written regardless); pip install %s, or "
                           "pass --report_to none", report_to, name, name, _TRACKER_PACKAGES[name][0])
    return found


def build_accelerator(*, output_dir: str | Path, mixed_precision: str,
                      gradient_accumulation_steps: int, report_to: str,
                      train_batch_size: int, max_grad_norm: float) -> Any:
    """An ``Accelerator`` that really runs data parallel on CPU, CUDA and DeepSpeed."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import ProjectConfiguration

    # AcceleratorState is a process-wide singleton that refuses new settings (e.g. another
    # mixed_precision) once set; a run owns its accelerator, so drop the previous run's settings.
    # The PartialState (the process group) is kept.
    if AcceleratorState._shared_state:
        AcceleratorState._reset_state()
    output_dir = Path(output_dir)
    use_deepspeed = deepspeed_requested()
    cpu = not torch.cuda.is_available() and not use_deepspeed
    from accelerate.utils import DistributedDataParallelKwargs

    # DDP's gradients as views into its all-reduce buckets instead of a second copy of every
    # gradient (the same all-reduced values: the 2-process test ends with the same weights);
    # ignored by DeepSpeed, which keeps its own buckets
    handlers: list[Any] = [DistributedDataParallelKwargs(gradient_as_bucket_view=True)]
    if use_deepspeed and not _has_accelerator():
        # accelerate picks no process-group backend for DeepSpeed without CUDA and then counts
        # one process whatever torchrun started (every rank "rank 0", DeepSpeed's batch check
        # failing); gloo is what DeepSpeed's CPU accelerator uses
        from accelerate.utils import InitProcessGroupKwargs

        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    accelerator = Accelerator(
        cpu=cpu,
        kwargs_handlers=handlers,
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=gradient_accumulation_steps,
        log_with=available_trackers(report_to) or None,
        project_config=ProjectConfiguration(project_dir=str(output_dir),
                                            logging_dir=str(output_dir / "logs")),
    )
    check_launched_processes(accelerator.num_processes)
    if uses_deepspeed(accelerator):
        ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
        ds_config["train_micro_batch_size_per_gpu"] = train_batch_size
        # accelerate fills "auto" from the prepared data loader, and we prepare none: DeepSpeed
        # then checks its 1-process default against N processes and refuses to start
        ds_config["train_batch_size"] = (train_batch_size * gradient_accumulation_steps
                                         * accelerator.num_processes)
        if ds_config.get("gradient_clipping") in (None, "auto"):
            ds_config["gradient_clipping"] = max_grad_norm
    return accelerator


def launcher_argv() -> list[str]:
    """The command line of the process that started this one (Linux ``/proc``; empty elsewhere)."""
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def requested_processes(argv: list[str]) -> int | None:
    """The ``--num_processes`` of an ``accelerate launch`` command line, if it is one."""
    if "launch" not in argv or not any("accelerate" in part for part in argv[:3]):
        return None
    for i, arg in enumerate(argv):
        name, _, value = arg.partition("=")
        if name in ("--num_processes", "--num-processes"):
            value = value or (argv[i + 1] if i + 1 < len(argv) else "")
            return int(value) if value.isdigit() else None
    return None


def check_launched_processes(num_processes: int) -> None:
    """Refuse a run that ``accelerate launch --num_processes N`` started as a single process.

    On a machine without GPUs, accelerate 1.x runs ``--num_processes 2`` (with or without
    ``--cpu``) as one ordinary process unless MPI is set up, and says nothing: the run would
    train one replica while the user believes there are N.
    """
    wanted = requested_processes(launcher_argv())
    if wanted and wanted > 1 and num_processes == 1:
        raise ConfigError(
            f"accelerate launch asked for {wanted} processes but started one (on a machine "
            f"without GPUs accelerate runs a single process unless MPI is configured); for "
            f"{wanted} CPU processes use: torchrun --nproc_per_node {wanted} -m rewardkit run "
            "..., or launch with --num_processes 1")


def weight_dtype(mixed_precision: str) -> torch.dtype:
    """The dtype frozen models (teacher, VAE, text encoder) run in."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def uses_deepspeed(accelerator: Any) -> bool:
    """True when ``accelerator`` trains through DeepSpeed."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def _engine_casts_weights(accelerator: Any) -> bool:
    """True under DeepSpeed with bf16/fp16: the engine holds the prepared model's weights in that
    dtype (its optimiser keeps the fp32 master copies) and accelerate leaves autocast off."""
    return uses_deepspeed(accelerator) and accelerator.mixed_precision in ("bf16", "fp16")


def step_autocast(accelerator: Any) -> Callable[[], ContextManager]:
    """The autocast the UNet calls of a training step run under.

    ``accelerator.autocast`` everywhere but under DeepSpeed with mixed precision, where
    accelerate turns its own autocast off and the engine has cast the student to bf16/fp16 while
    the step feeds it fp32 latents and embeddings (and the fp32 EMA target would run in fp32):
    there it is ``torch.autocast`` in the mixed-precision dtype, the context accelerate enters
    for the same run under DDP, so teacher, student and target compute in the same precision
    either way and the outputs come back to fp32 for the loss as before.
    """
    if not _engine_casts_weights(accelerator):
        return accelerator.autocast
    device_type, dtype = accelerator.device.type, weight_dtype(accelerator.mixed_precision)
    return lambda: torch.autocast(device_type=device_type, dtype=dtype)


def fp32_master_weights(accelerator: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """How to read a parameter's fp32 master value under DeepSpeed with bf16/fp16, else None.

    The engine trains a bf16/fp16 copy of the student; the fp32 weights the optimiser updates
    live in its ZeRO partitions (each rank holds ``1/N`` of them under ZeRO-2). DeepSpeed's
    ``safe_get_full_fp32_param`` assembles one parameter's full fp32 value on every rank (one
    all-reduce of that parameter: a collective, so every rank must read the same parameters in
    the same order). Without mixed precision the engine's parameters are the fp32 weights.
    """
    if not _engine_casts_weights(accelerator):
        return None
    from deepspeed.utils import safe_get_full_fp32_param

    def read(param: torch.Tensor) -> torch.Tensor:
        value = safe_get_full_fp32_param(param)
        if value is None:  # a parameter the optimiser does not hold (frozen): it has no master
            return param.detach().float()
        return value

    return read
