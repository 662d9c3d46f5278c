"""Count the host synchronisations a piece of code forces.

A host sync is a call that makes Python wait for a tensor's *value*. Counted: ``Tensor.item``,
``tolist``, ``numpy``, and ``bool`` / ``float`` / ``int`` / ``__index__`` of a tensor (an ``if``
on a tensor, a ``float(loss)``, a tensor indexing a list). Not counted: copies to the host
(``.cpu()``) and ops whose output size depends on values (``nonzero``, boolean masks), which a
step could also hide a sync in. On a GPU each one drains the stream; on the CPU they cost nothing, which is
why they are counted rather than timed::

    with count_host_syncs() as syncs:
        recipe.train_step()
    assert syncs.count <= 1, syncs.report()

Written here because neither torch nor accelerate offers a counter that works on the CPU
(``torch.cuda.set_sync_debug_mode`` needs CUDA and only warns).
"""

from __future__ import annotations

import contextlib
import traceback
from dataclasses import dataclass, field
from typing import Iterator

import torch

_METHODS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")


@dataclass
class HostSyncs:
    """What :func:`count_host_syncs` saw: one entry per sync, the method and the caller."""

    calls: list[tuple[str, str]] = field(default_factory=list)

    @property
    def count(self) -> int:
        """Number of host syncs."""
        return len(self.calls)

    def report(self) -> str:
        """One line per sync: the method and the innermost rewardkit frame that called it."""
        return "\n".join(f"{method} at {where}" for method, where in self.calls) or "no host syncs"


#: Reads that are not device syncs on any machine: torch's non-capturable optimisers keep their
#: ``step`` counters on the CPU whatever the parameters' device, and
#: :func:`rewardkit.cpu_values.cpu_tolist` reads tensors drawn from a CPU generator (it refuses
#: any other).
CPU_ONLY_READS = ("torch/optim/", "rewardkit/cpu_values.py")


def _caller() -> str | None:
    frames = traceback.extract_stack()[:-2]  # drop this function and the patched method
    if any(marker in frames[-1].filename for marker in CPU_ONLY_READS):
        return None
    for frame in reversed(frames):
        if "/rewardkit/" in frame.filename and "/testing/" not in frame.filename:
            return f"{frame.filename.rsplit('/rewardkit/', 1)[1]}:{frame.lineno} ({frame.line})"
    frame = frames[-1]
    return f"{frame.filename}:{frame.lineno}"


@contextlib.contextmanager
def count_host_syncs() -> Iterator[HostSyncs]:
    """Patch the tensor methods that read a value back to the host and record every call."""
    seen = HostSyncs()
    originals = {name: getattr(torch.Tensor, name) for name in _METHODS}

    def wrap(name: str):
        original = originals[name]

        def counted(self, *args, **kwargs):
            where = _caller()
            if where is not None:
                seen.calls.append((name, where))
            return original(self, *args, **kwargs)

        return counted

    try:
        for name in _METHODS:
            setattr(torch.Tensor, name, wrap(name))
        yield seen
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
