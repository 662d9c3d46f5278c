"""Counting the bytes of live tensors, op by op: the measuring instrument of the memory plan.

:class:`LiveBytes` is a ``TorchDispatchMode``: every tensor an op returns is registered by its
storage (views share one), with a weak reference that notes when the storage is freed. What it
records is an event log ``(storage, +bytes)`` / ``(storage, -bytes)`` in op order, so a peak can
be read afterwards with some storages left out (:meth:`LiveBytes.peak`): the parameters'
gradients, say, which the plan counts on a line of their own.

It works the same on real CPU tensors (the plan's validation) and under
``torch._subclasses.fake_tensor.FakeTensorMode`` (the plan's activation measurements: shapes and
dtypes without memory or arithmetic, so a full-size SDXL UNet step is measured in seconds).
Tensors that exist before the mode is entered (parameters, inputs) are not counted; the CPU
allocator's own caching and fragmentation are not modelled (see docs/memory.md).
"""

from __future__ import annotations

import weakref
from typing import Any, Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def _has_storage(tensor: torch.Tensor) -> bool:
    try:
        tensor.untyped_storage()
    except (RuntimeError, NotImplementedError):  # sparse and other storage-less tensors
        return False
    return True


def storage_key(tensor: torch.Tensor) -> int:
    """An id of ``tensor``'s storage, shared by its views (the StorageImpl's address)."""
    return tensor.untyped_storage()._cdata


class LiveBytes(TorchDispatchMode):
    """Record the bytes of the storages ops create while the mode is active, and when they die.

    ``events`` is a list of ``(serial, delta)``; :attr:`now` is the bytes alive at this moment,
    :meth:`peak` the largest running sum (optionally leaving some storages out), :meth:`mark`
    notes a position in the log (``peak(since=...)``), :meth:`serials` names live tensors.
    """

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[int, int]] = []
        self.alive: dict[int, tuple[int, int]] = {}  # storage key -> (serial, bytes)
        self.now = 0

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self.alive:
            return
        serial, size = len(self.events), storage.nbytes()
        self.alive[key] = (serial, size)
        self.now += size
        self.events.append((serial, size))
        weakref.finalize(storage, self._freed, key, serial)

    def _freed(self, key: int, serial: int) -> None:
        found = self.alive.get(key)
        if found is not None and found[0] == serial:
            del self.alive[key]
            self.now -= found[1]
            self.events.append((serial, -found[1]))

    def serials(self, tensors: Iterable[torch.Tensor]) -> set[int]:
        """The serials of the (live) storages of ``tensors`` the mode registered."""
        found = (self.alive.get(storage_key(t)) for t in tensors)
        return {entry[0] for entry in found if entry is not None}

    def bytes_of(self, serials: Iterable[int]) -> int:
        """The bytes of the live storages with these serials."""
        wanted = set(serials)
        return sum(size for serial, size in self.alive.values() if serial in wanted)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {storage_key(item) for item in tree_flatten((args, kwargs))[0]
                  if isinstance(item, torch.Tensor) and _has_storage(item)}
        for item in tree_flatten(out)[0]:
            # an output sharing an input's storage is a view or an in-place result: not new
            # memory (and a view of a tensor made before the mode, a weight's .t(), is none)
            if (isinstance(item, torch.Tensor) and _has_storage(item)
                    and storage_key(item) not in inputs):
                self._track(item)
        return out

    def mark(self) -> int:
        """A position in the event log (for :meth:`peak`'s ``since``)."""
        return len(self.events)

    def live_at(self, position: int, exclude: Iterable[int] = ()) -> int:
        """Bytes alive at ``position`` of the log, without the storages in ``exclude``."""
        left_out = set(exclude)
        return sum(delta for key, delta in self.events[:position] if key not in left_out)

    def peak(self, exclude: Iterable[int] = (), since: int = 0, until: int | None = None) -> int:
        """The largest number of live bytes between log positions ``since`` and ``until``,
        counting every storage the mode saw except those in ``exclude``."""
        left_out = set(exclude)
        live = self.live_at(since, left_out)
        best = live
        for key, delta in self.events[since:until]:
            if key in left_out:
                continue
            live += delta
            best = max(best, live)
        return best


def gradients(module: torch.nn.Module) -> list[torch.Tensor]:
    """``module``'s parameter gradients (after a backward)."""
    return [p.grad for p in module.parameters() if p.grad is not None]


__all__ = ["LiveBytes", "gradients", "storage_key"]
