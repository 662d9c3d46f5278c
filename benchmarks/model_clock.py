"""Seconds a training step spends inside its models, so the rest (the framework's overhead) can
be told apart: forward calls of given modules, calls of given reward models, and every
``backward`` (all of autograd's work, whichever models it runs through).

>>> clock = ModelClock(device)
>>> with clock.watching(modules=[unet, vae.encoder], rewards=[rm]):
...     clock.reset(); began = time.perf_counter(); train_step()
...     overhead = time.perf_counter() - began - clock.seconds

Only the outermost timed call counts (a reward model whose modules are also watched is not
counted twice). On a GPU each boundary synchronises, so use it for profiled rounds only.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Iterable

import torch


class ModelClock:
    """Accumulates the seconds spent in watched models since :meth:`reset`."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = 0.0
        self.calls = 0
        self._depth = 0
        self._began = 0.0

    def reset(self) -> None:
        """Start counting from zero."""
        self.seconds, self.calls = 0.0, 0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def enter(self) -> None:
        """A model call begins."""
        if self._depth == 0:
            self._sync()
            self._began = time.perf_counter()
        self._depth += 1

    def leave(self) -> None:
        """A model call ends."""
        self._depth -= 1
        if self._depth == 0:
            self._sync()
            self.seconds += time.perf_counter() - self._began
            self.calls += 1

    def timed(self, function: Any) -> Any:
        """``function`` with its calls counted as model time."""
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self.enter()
            try:
                return function(*args, **kwargs)
            finally:
                self.leave()
        return wrapper

    @contextmanager
    def watching(self, modules: Iterable[torch.nn.Module] = (), rewards: Iterable[Any] = ()):
        """Count forward calls of ``modules``, calls of the reward models ``rewards`` (by their
        class's ``__call__``) and ``torch.autograd.backward`` while inside."""
        handles = []
        for module in modules:
            handles.append(module.register_forward_pre_hook(lambda *_: self.enter()))
            handles.append(module.register_forward_hook(lambda *_: self.leave()))
        classes = {type(reward) for reward in rewards}
        originals = {cls: (cls.__call__, "__call__" in cls.__dict__) for cls in classes}
        backward = torch.autograd.backward
        try:
            for cls, (call, _) in originals.items():
                cls.__call__ = self.timed(call)
            torch.autograd.backward = self.timed(backward)
            yield self
        finally:
            torch.autograd.backward = backward
            for cls, (call, own) in originals.items():
                if own:
                    cls.__call__ = call
                else:  # it was inherited: inherit it again
                    del cls.__call__
            for handle in handles:
                handle.remove()


__all__ = ["ModelClock"]
