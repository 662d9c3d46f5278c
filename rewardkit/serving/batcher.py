"""Batching requests of concurrent clients into the reward model's calls: a bounded queue and
one worker thread.

Each request is split into jobs of at most ``max_batch`` images. The worker takes the oldest
job, then, while the batch has room, the next waiting jobs of the same image shape and
metadata (waiting up to ``wait_s`` for more when the batch is not full; with 0, the requests
that arrived while the RM ran its last call make the next one), scores them in one
call, and hands each job its slice. The RM is only ever called from the worker thread, one call
at a time (torch modules and numpy judges need no locking then).

The queue holds at most ``max_queue`` images; a request that would overflow it is refused at
once (:class:`QueueFull`, the server's 503) rather than left waiting without bound.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

#: ``score(images, prompts, metadata) -> (scores [B], {term: [B]})``.
ScoreFunction = Callable[[torch.Tensor, list, Any], "tuple[torch.Tensor, dict[str, torch.Tensor]]"]


class QueueFull(RuntimeError):
    """The queue has no room for a request's images now; try again later."""


@dataclass
class _Job:
    images: torch.Tensor
    prompts: list[str]
    metadata: Any
    future: Future = field(default_factory=Future)

    @property
    def key(self) -> tuple:
        """Jobs with equal keys may share one RM call: images of one shape, and per-image
        metadata (lists, joined) or the same metadata for the whole batch."""
        per_image = isinstance(self.metadata, list)
        return (tuple(self.images.shape[1:]), per_image,
                None if per_image else _canonical(self.metadata))


class Batcher:
    """Scores requests through ``score`` in batches of at most ``max_batch`` images.

    ``submit`` returns a ``concurrent.futures.Future`` of ``(scores, terms)`` for the request;
    :meth:`close` stops the worker (waiting jobs fail). ``stats`` counts calls and images.
    """

    def __init__(self, score: ScoreFunction, max_batch: int = 32, max_queue: int = 512,
                 wait_s: float = 0.0) -> None:
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be at least 1")
        self.score, self.max_batch, self.max_queue = score, max_batch, max_queue
        self.wait_s = wait_s
        self.jobs: deque[_Job] = deque()
        self.queued_images = 0
        self.stats = {"calls": 0, "images": 0, "largest_batch": 0}
        self.condition = threading.Condition()
        self.closed = False
        self.worker = threading.Thread(target=self._work, name="reward-batcher", daemon=True)
        self.worker.start()

    # ------------------------------------------------------------ clients

    def submit(self, images: torch.Tensor, prompts: list[str], metadata: Any = None) -> Future:
        """Queue one request; its future gives ``(scores [B], {term: [B]})``. Raises
        :class:`QueueFull` when its images do not fit the queue now."""
        count = images.shape[0]
        result: Future = Future()
        if count == 0:
            result.set_result((torch.zeros(0), {}))
            return result
        jobs = []
        for start in range(0, count, self.max_batch):
            meta = (metadata[start:start + self.max_batch] if isinstance(metadata, list)
                    else metadata)
            jobs.append(_Job(images[start:start + self.max_batch],
                             prompts[start:start + self.max_batch], meta))
        with self.condition:
            if self.closed:
                raise QueueFull("the server is shutting down")
            if self.queued_images + count > self.max_queue:
                raise QueueFull(f"{self.queued_images} images are waiting and the queue holds "
                                f"{self.max_queue} (--max-queue)")
            self.jobs.extend(jobs)
            self.queued_images += count
            self.condition.notify()
        _gather([job.future for job in jobs], result)
        return result

    def close(self) -> None:
        """Stop the worker; jobs still waiting fail with :class:`QueueFull`."""
        with self.condition:
            self.closed = True
            waiting, self.jobs = list(self.jobs), deque()
            self.condition.notify_all()
        for job in waiting:
            job.future.set_exception(QueueFull("the server is shutting down"))

    # ------------------------------------------------------------ the worker

    def _take(self) -> list[_Job] | None:
        """The next batch: the oldest job and the waiting jobs that fit beside it."""
        with self.condition:
            while not self.jobs and not self.closed:
                self.condition.wait()
            if self.closed:
                return None
            batch = [self.jobs.popleft()]
            size = batch[0].images.shape[0]
            deadline = time.monotonic() + self.wait_s
            while size < self.max_batch:
                match = next((job for job in self.jobs if job.key == batch[0].key
                              and size + job.images.shape[0] <= self.max_batch), None)
                if match is not None:
                    self.jobs.remove(match)
                    batch.append(match)
                    size += match.images.shape[0]
                    continue
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    break
                self.condition.wait(left)
            self.queued_images -= size
            return batch

    def _work(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                images = torch.cat([job.images for job in batch])
                prompts = [p for job in batch for p in job.prompts]
                metadata = batch[0].metadata
                if isinstance(metadata, list):
                    metadata = [m for job in batch for m in job.metadata]
                scores, terms = self.score(images, prompts, metadata)
            except BaseException as error:  # handed to every client of the batch
                for job in batch:
                    job.future.set_exception(error)
                continue
            self.stats["calls"] += 1
            self.stats["images"] += images.shape[0]
            self.stats["largest_batch"] = max(self.stats["largest_batch"], images.shape[0])
            start = 0
            for job in batch:
                end = start + job.images.shape[0]
                job.future.set_result((scores[start:end],
                                       {name: values[start:end] for name, values in terms.items()}))
                start = end


def _canonical(metadata: Any) -> str:
    """A comparable text of JSON-like metadata."""
    import json

    return json.dumps(metadata, sort_keys=True, default=repr)


def _gather(parts: list[Future], result: Future) -> None:
    """Complete ``result`` with the concatenation of ``parts`` (or the first failure)."""
    lock, left = threading.Lock(), [len(parts)]

    def done(_: Future) -> None:
        with lock:
            left[0] -= 1
            if left[0]:
                return
        failed = next((p.exception() for p in parts if p.exception() is not None), None)
        if failed is not None:
            result.set_exception(failed)
            return
        outputs = [p.result() for p in parts]
        scores = torch.cat([o[0] for o in outputs])
        terms = {name: torch.cat([o[1][name] for o in outputs]) for name in outputs[0][1]}
        result.set_result((scores, terms))

    for part in parts:
        part.add_done_callback(done)


__all__ = ["Batcher", "QueueFull"]
