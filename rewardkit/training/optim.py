"""The student's optimiser and learning-rate schedule (AdamW, or bitsandbytes AdamW8bit)."""

from __future__ import annotations

import importlib.util
import logging
from typing import Any, Iterable

import torch

logger = logging.getLogger(__name__)


def build_optimizer(params: Iterable[torch.nn.Parameter], *, learning_rate: float,
                    betas: tuple[float, float], weight_decay: float, eps: float,
                    use_8bit_adam: bool = False) -> torch.optim.Optimizer:
    """AdamW over ``params`` (only those requiring grad); AdamW8bit when asked for and installed."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("the student has no trainable parameters")
    optimizer_class: Any = torch.optim.AdamW
    if use_8bit_adam:
        if importlib.util.find_spec("bitsandbytes") is not None:
            import bitsandbytes as bnb

            optimizer_class = bnb.optim.AdamW8bit
        else:
            logger.warning("use_8bit_adam: bitsandbytes is not installed; using torch AdamW")
    if optimizer_class is torch.optim.AdamW:
        # the multi-tensor implementation on every device (torch picks it only for CUDA
        # tensors by default); fused where the parameters are on CUDA and DeepSpeed does not
        # wrap the optimiser (not measured here: no GPU)
        from .runtime import deepspeed_requested

        on_cuda = all(p.is_cuda for p in params) and not deepspeed_requested()
        return torch.optim.AdamW(params, lr=learning_rate, betas=betas, weight_decay=weight_decay,
                                 eps=eps, **({"fused": True} if on_cuda else {"foreach": True}))
    return optimizer_class(params, lr=learning_rate, betas=betas, weight_decay=weight_decay,
                           eps=eps)


def build_lr_scheduler(name: str, optimizer: torch.optim.Optimizer, *, warmup_steps: int,
                       total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """diffusers' ``get_scheduler`` (same names as the diffusers scripts' ``--lr_scheduler``).

    Steps are optimiser steps; the recipe calls ``scheduler.step()`` once per optimiser step.
    """
    from diffusers.optimization import get_scheduler

    return get_scheduler(name, optimizer=optimizer, num_warmup_steps=warmup_steps,
                         num_training_steps=total_steps)
