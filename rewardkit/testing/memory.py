"""Measuring a training step's peak memory on the CPU, in bytes of tensors: what the memory plan
(:mod:`rewardkit.plan`) is checked against.

The CPU allocator's own figures (RSS, allocator statistics) mix in Python objects, caching and
fragmentation, so the peak is counted in tensors instead:

- before the step, every live CPU tensor found by the garbage collector, counted once per
  storage (parameters, buffers, optimiser states, EMA copies, cached embeddings);
- during the step, :class:`rewardkit.plan.tracker.LiveBytes`: every storage an op creates, until
  it is freed, and the largest running sum.

The peak is the first plus the second. It is exact for tensors (views and shared storages
counted once) and leaves out what the plan leaves out too (allocator slack, the CUDA context).
"""

from __future__ import annotations

import gc
from typing import Any, Callable

import torch

from ..plan.tracker import LiveBytes


def live_tensor_bytes() -> int:
    """Bytes of every live CPU tensor the garbage collector can see, each storage once."""
    gc.collect()
    seen: set[int] = set()
    total = 0
    for obj in gc.get_objects():
        try:
            if not isinstance(obj, torch.Tensor) or obj.device.type != "cpu":
                continue
            storage = obj.untyped_storage()
        except Exception:  # noqa: BLE001 - tensors without storage (sparse, subclasses)
            continue
        if storage._cdata not in seen:
            seen.add(storage._cdata)
            total += storage.nbytes()
    return total


def peak_bytes(step: Callable[[], Any]) -> int:
    """The most bytes of tensors alive at once while ``step()`` runs: those alive before it
    plus the running peak of those it creates."""
    before = live_tensor_bytes()
    tracker = LiveBytes()
    with tracker:
        step()
    return before + tracker.peak()


__all__ = ["live_tensor_bytes", "peak_bytes"]
