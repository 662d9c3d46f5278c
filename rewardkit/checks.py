"""Value checks that need not stop the device: NaN/inf detection read back once per step.

Checking a tensor's value (``if not torch.isfinite(x).all()``) makes Python wait for the device.
Outside training that costs nothing worth saving, so by default :func:`require` checks at once.
Inside a training step the recipe opens :func:`deferred` and the same checks only *record* a
device-side count of bad values; :meth:`DeferredChecks.read` then reads those counts together
with the step's metrics in one transfer and raises the first failed check's error, before
anything of that step is saved::

    with deferred() as checks:
        loss = ...                                   # RMs call require(...) inside
        require(nonfinite_count(loss), lambda n, values: f"loss is not finite ({n} values)",
                TrainingError)
        ...                                          # backward, optimiser step
        values = checks.read({"loss": loss})         # the one host sync; raises on NaN
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping

import torch

Message = Callable[[int, Mapping[str, float]], str]


@dataclass
class DeferredChecks:
    """Bad-value counts recorded during a step, read back with its metrics by :meth:`read`."""

    counts: list[torch.Tensor] = field(default_factory=list)
    failures: list[tuple[Message, type[Exception]]] = field(default_factory=list)

    def add(self, bad_count: torch.Tensor, message: Message, error: type[Exception]) -> None:
        """Record a check that fails when ``bad_count`` (a 0-d tensor) is not zero."""
        self.counts.append(bad_count.detach().reshape(()).float())
        self.failures.append((message, error))

    def read(self, metrics: Mapping[str, torch.Tensor | float],
             reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
             processes: int = 1) -> dict[str, float]:
        """Read ``metrics`` (0-d tensors or numbers) and every recorded count in ONE transfer.

        ``reduce`` (a mean over ``processes`` processes) is applied to the stacked values before
        they are read, so a NaN on any process stops every process; the counts in the messages
        are the totals over processes. Raises the first failed check's
        error (its message sees the count and the metrics); returns the metrics as floats.
        """
        names = list(metrics)
        tensors = [value for value in metrics.values() if isinstance(value, torch.Tensor)]
        device = tensors[0].device if tensors else (
            self.counts[0].device if self.counts else torch.device("cpu"))
        stacked = [torch.as_tensor(metrics[n], dtype=torch.float32, device=device).detach()
                   .reshape(()).float() for n in names]
        stacked += [count.to(device) for count in self.counts]
        if not stacked:
            return {}
        values = torch.stack(stacked)
        if reduce is not None:
            values = reduce(values)
        read = values.tolist()  # the step's one host sync
        out = dict(zip(names, read[:len(names)]))
        for count, (message, error) in zip(read[len(names):], self.failures):
            if count != 0:
                raise error(message(int(round(count * processes)) or 1, out))
        self.counts.clear()
        self.failures.clear()
        return out


_active: ContextVar[DeferredChecks | None] = ContextVar("rewardkit_deferred_checks", default=None)


@contextlib.contextmanager
def deferred() -> Iterator[DeferredChecks]:
    """Within this block :func:`require` records its checks instead of reading them."""
    checks = DeferredChecks()
    token = _active.set(checks)
    try:
        yield checks
    finally:
        _active.reset(token)


def require(bad_count: torch.Tensor, message: Message, error: type[Exception]) -> None:
    """Raise ``error(message(count, {}))`` if ``bad_count`` is not zero, now or (inside
    :func:`deferred`) when the step's values are read."""
    checks = _active.get()
    if checks is not None:
        checks.add(bad_count, message, error)
        return
    count = int(bad_count)
    if count:
        raise error(message(count, {}))


def nonfinite_count(values: torch.Tensor) -> torch.Tensor:
    """How many entries of ``values`` are NaN or inf, as a 0-d tensor on their device."""
    return (~torch.isfinite(values.detach())).sum()
