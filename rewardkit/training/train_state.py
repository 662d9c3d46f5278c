"""The trained module, its optimiser, the LR schedule and the RNGs in a checkpoint, without pickles.

``accelerate.save_state`` writes the optimiser and scheduler with ``torch.save`` and the RNG
states as ``.pkl`` pickles; rewardkit reads such files only with ``weights_only=True``, but a
checkpoint with no pickle in it at all is simpler to trust and to check. So the training loop
writes the same state itself (:mod:`rewardkit.training.safe_state`)::

    model.safetensors                        the trained module (unwrapped), main process
    optimizer.safetensors + optimizer.json   its optimiser, main process
    scheduler.json                           the LR schedule, main process
    grad_scaler.json                         fp16's loss scaler, when there is one
    random_states_{rank}.safetensors + .json python, numpy, torch (CPU and CUDA) RNGs, every process

Under DeepSpeed the engine shards the optimiser (and, with ZeRO-3, the weights) across processes
in its own format, so there :meth:`accelerate.Accelerator.save_state` writes them (DeepSpeed's
files are ``torch.save`` archives; they are read back only by DeepSpeed's own loader).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from .runtime import uses_deepspeed
from .safe_state import (has_state, load_json_state, load_optimizer_state, load_state,
                         load_tensor_file, save_json_state, save_optimizer_state, save_state,
                         save_tensor_file)

MODEL_WEIGHTS = "model.safetensors"
SCHEDULER_STATE = "scheduler.json"
SCALER_STATE = "grad_scaler.json"


def random_states_name(rank: int) -> str:
    """Name (without suffix) of process ``rank``'s RNG states."""
    return f"random_states_{rank}"


def rng_states() -> dict[str, Any]:
    """This process's python, numpy and torch (CPU, and every CUDA device) RNG states."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states = {"python": [version, list(internal), gauss],
              "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
              "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = list(torch.cuda.get_rng_state_all())
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned."""
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_train_state(accelerator: Any, folder: Path, model: nn.Module, optimizer: Any,
                     lr_scheduler: Any) -> None:
    """Write the trained ``model`` (unwrapped), ``optimizer``, ``lr_scheduler``, the loss scaler
    and this process's RNG states into ``folder`` (every process calls this)."""
    if uses_deepspeed(accelerator):
        accelerator.save_state(str(folder), safe_serialization=True)
        return
    if accelerator.is_main_process:
        save_tensor_file(model.state_dict(), folder / MODEL_WEIGHTS)
        save_optimizer_state(optimizer, folder)
        save_json_state(lr_scheduler.state_dict(), folder / SCHEDULER_STATE)
        if accelerator.scaler is not None:
            save_json_state(accelerator.scaler.state_dict(), folder / SCALER_STATE)
    save_state(rng_states(), folder, random_states_name(accelerator.process_index))


def load_train_state(accelerator: Any, folder: Path, model: nn.Module, optimizer: Any,
                     lr_scheduler: Any) -> None:
    """Restore what :func:`save_train_state` wrote (every process); a missing or damaged file
    is named."""
    if uses_deepspeed(accelerator):
        from .checkpoint import load_checkpoint

        load_checkpoint(accelerator, folder)
        return
    try:
        model.load_state_dict(load_tensor_file(folder / MODEL_WEIGHTS))
    except RuntimeError as error:
        raise ConfigError(f"resume_from_checkpoint: '{folder / MODEL_WEIGHTS}' does not fit the "
                          f"model of this config ({str(error)[:200]})") from None
    load_optimizer_state(optimizer, folder)
    lr_scheduler.load_state_dict(load_json_state(folder / SCHEDULER_STATE))
    if accelerator.scaler is not None and (folder / SCALER_STATE).is_file():
        accelerator.scaler.load_state_dict(load_json_state(folder / SCALER_STATE))
    name = random_states_name(accelerator.process_index)
    if not has_state(folder, name):
        raise ConfigError(f"resume_from_checkpoint: '{folder}' has no {name}.json (was it "
                          "written with a different number of processes?)")
    set_rng_states(load_state(folder, name))


__all__ = ["MODEL_WEIGHTS", "load_train_state", "rng_states", "save_train_state",
           "set_rng_states"]
