"""Errors raised while training."""

from __future__ import annotations

import contextlib
from typing import Iterator

from ..errors import RewardkitError


class TrainingError(RewardkitError):
    """Training cannot go on (e.g. a non-finite loss); the message names the step and the term."""


#: What allocators say when memory runs out (torch's CPU allocator, CUDA, MPS).
OUT_OF_MEMORY_MARKERS = ("can't allocate memory", "out of memory", "not enough memory")


def out_of_memory_error(error: BaseException, step: int, config: object) -> "TrainingError | None":
    """A :class:`TrainingError` naming the settings to lower when ``error`` is an allocation
    failure during step ``step`` (``None`` for any other error)."""
    import torch

    text = str(error).lower()
    oom = isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and any(m in text for m in OUT_OF_MEMORY_MARKERS))
    if not oom:
        return None
    batch = getattr(config, "train_batch_size", None)
    levers = [f"train_batch_size (now {batch})" if batch is not None else "train_batch_size"]
    for key, hint in (("gradient_accumulation_steps", "raise gradient_accumulation_steps to keep "
                       "the effective batch"), ("gradient_checkpointing", "set "
                       "gradient_checkpointing"), ("mixed_precision", "use mixed_precision bf16 "
                       "or fp16"), ("proxy_batch_size", "lower proxy_batch_size")):
        if hasattr(config, key):
            levers.append(hint)
    return TrainingError(f"out of memory at step {step}: lower {levers[0]}"
                         + ("; or " + ", ".join(levers[1:]) if len(levers) > 1 else "")
                         + f" ({str(error).splitlines()[0][:120]})")


@contextlib.contextmanager
def naming_out_of_memory(step: int, config: object) -> Iterator[None]:
    """Turn an allocation failure inside the block (optimiser step ``step``) into
    :func:`out_of_memory_error`; any other error passes unchanged."""
    try:
        yield
    except RuntimeError as error:  # torch.OutOfMemoryError is a RuntimeError
        named = out_of_memory_error(error, step, config)
        if named is None:
            raise
        raise named from None
