"""Reading the next batches in a background thread while the step computes.

>>> batches = Prefetcher(loader, depth=1, pin_memory=torch.cuda.is_available())
>>> batch = next(batches)         # the batch ``next(loader)`` would have given, prepared ahead
>>> state = batches.state_dict()  # the position after the batches *taken*, not the ones read ahead

The thread reads, decodes and transforms up to ``depth`` batches ahead (and, with
``pin_memory``, copies their tensors to page-locked memory, so a ``.to(device,
non_blocking=True)`` copy overlaps the GPU's work). The batches and their order are those of
the wrapped loader: it is the only thing the thread touches, and the loader's own randomness
depends on the sample, not on who reads it. Its position is saved with each prepared batch, so
a checkpoint written after ``N`` taken batches resumes at batch ``N + 1`` however far the
thread had read.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

import torch

from ..errors import DataError

#: How often (s) a thread waiting for room to read ahead looks whether it should stop.
_POLL_S = 0.1


def pin(batch: dict[str, Any]) -> dict[str, Any]:
    """``batch`` with its CPU tensors in page-locked memory (other values as they are)."""
    return {key: value.pin_memory() if isinstance(value, torch.Tensor) else value
            for key, value in batch.items()}


class Prefetcher:
    """An iterator over ``loader``'s batches, read ``depth`` batches ahead by one thread.

    ``loader`` is an iterator of dict batches with ``state_dict()`` / ``load_state_dict()``
    (:class:`~rewardkit.data.loader.ResumableLoader`, a prompt loader). The thread starts at the
    first ``next``; :meth:`load_state_dict` before then (or after :meth:`close`) moves the loader.
    A loader's error is raised by the ``next`` that would have returned that batch.
    """

    def __init__(self, loader: Any, *, depth: int = 1, pin_memory: bool = False,
                 device: torch.device | None = None) -> None:
        if not isinstance(depth, int) or depth < 1:
            raise DataError(f"prefetch depth must be a positive integer, got {depth!r}")
        self.loader, self.depth, self.pin_memory = loader, depth, pin_memory
        self.device = device  # the CUDA device pinned batches go to
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue = queue.Queue()
        self._slots = threading.Semaphore(depth)  # batches the thread may read ahead
        self._stop = threading.Event()
        self._state: dict[str, Any] | None = None  # the position after the batches taken
        self._failed: BaseException | None = None

    def __iter__(self) -> "Prefetcher":
        return self

    def __next__(self) -> dict[str, Any]:
        if self._failed is not None:
            raise self._failed
        if self._thread is None:
            self._start()
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._failed = item
            self.close()
            raise item
        batch, self._state = item
        self._slots.release()
        return batch

    def _start(self) -> None:
        self._state = self.loader.state_dict()
        self._stop.clear()
        self._thread = threading.Thread(target=self._read, name="rewardkit-prefetch",
                                         daemon=True)
        self._thread.start()

    def _read(self) -> None:
        # Whatever goes wrong here is queued: a thread that died silently would leave ``next``
        # waiting forever.
        try:
            if self.pin_memory and self.device is not None and self.device.type == "cuda":
                # a new thread's current device is 0: pinning there would open a context on GPU
                # 0 in every process (torch's DataLoader pins the same way)
                torch.cuda.set_device(self.device)
            while not self._stop.is_set():
                if not self._slots.acquire(timeout=_POLL_S):
                    continue
                batch = next(self.loader)
                if self.pin_memory:
                    batch = pin(batch)
                self._queue.put((batch, self.loader.state_dict()))
        except DataError as error:  # already one sentence naming the data
            self._queue.put(error)
        except BaseException as error:  # noqa: BLE001 - handed to the step that needs the batch
            item = DataError(f"reading the next training batch from {self.loader!r} failed: "
                             f"{type(error).__name__}: {error}")
            item.__cause__ = error
            self._queue.put(item)

    # ------------------------------------------------------------ resuming

    def state_dict(self) -> dict[str, Any]:
        """The loader's position after the batches taken so far (not those read ahead)."""
        return self._state if self._state is not None else self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Drop what was read ahead and continue from ``state`` (see :meth:`state_dict`)."""
        self.close()
        self.loader.load_state_dict(state)
        self._state, self._failed = None, None

    # ------------------------------------------------------------ the thread's end

    def close(self) -> None:
        """Stop the thread, drop the batches it read ahead and move the loader back to the
        position after the batches taken (the loader stays open)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join()
        self._queue, self._slots = queue.Queue(), threading.Semaphore(self.depth)
        if self._state is not None:
            self.loader.load_state_dict(self._state)

    def __repr__(self) -> str:
        return f"Prefetcher({self.loader!r}, depth={self.depth}, pin_memory={self.pin_memory})"


__all__ = ["Prefetcher", "pin"]
