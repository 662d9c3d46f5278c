"""Where a loader is in its (infinite) stream of samples, and how to get back there.

Two cursors, one per kind of source:

- :class:`IndexCursor` for random-access sources (image folders, latent folders, any
  :class:`~rewardkit.data.SampleSource`): epoch ``e`` visits a permutation of all indices drawn
  from ``(seed, e)``; rank ``r`` of ``W`` takes positions ``r, r+W, r+2W, ...`` of it, so ranks
  are disjoint within an epoch. State: ``(epoch, position)``.
- :class:`ShardCursor` for webdataset streams: epoch ``e`` visits the shards in an order drawn
  from ``(seed, e)``; with at least as many shards as ranks, rank ``r`` reads shards
  ``r, r+W, ...`` of that order, otherwise every rank reads every shard and keeps samples
  ``r, r+W, ...`` of each. Each shard passes through a shuffle buffer seeded by ``(seed, e,
  shard)``. State: ``(epoch, shard position, samples taken from that shard)``; resuming re-reads
  the current shard and skips what was taken (raw bytes only, nothing is decoded again).

Both hand out :class:`Item` s: a thunk that loads the sample and the identity that seeds its
random crop and flip. Both raise :class:`DataError` when a whole epoch gave no readable sample.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import DataError
from .decode import sample_fields
from .sample import CorruptSample, Sample, SampleSource
from .shard_spec import ShardReader
from .tar_samples import RawSample, iter_tar_samples


def derived_seed(*parts: Any) -> int:
    """A 64-bit seed from any parts, stable across processes and Python versions."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's order of ``n`` items."""
    return np.random.default_rng([seed % 2**63, epoch]).permutation(n)


@dataclass
class Item:
    """One sample to load: ``load()`` returns it (or raises), ``rng`` seeds its augmentation."""

    epoch: int
    where: str
    load: Callable[[], Sample]
    rng_seed: int

    def rng(self) -> random.Random:
        """A fresh generator for this sample's random crop and flip."""
        return random.Random(self.rng_seed)


class _EpochGuard:
    """Counts readable samples per epoch; raises once an epoch has ended with none."""

    def __init__(self, describe: str) -> None:
        self.describe = describe
        self.good: dict[int, int] = {}

    def seen(self, epoch: int) -> None:
        self.good.setdefault(epoch, 0)

    def mark_good(self, epoch: int) -> None:
        self.good[epoch] = self.good.get(epoch, 0) + 1

    def check(self, current_epoch: int) -> None:
        for epoch in sorted(e for e in self.good if e < current_epoch):
            if self.good.pop(epoch) == 0:
                raise DataError(f"no readable samples in {self.describe}: a whole epoch was "
                                "skipped")

    def state_dict(self) -> dict[str, int]:
        return {str(k): v for k, v in self.good.items()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.good = {int(k): int(v) for k, v in state.items()}


class IndexCursor:
    """Position in the shuffled, rank-sharded index stream of a random-access source."""

    kind = "index"

    def __init__(self, source: SampleSource, seed: int, rank: int, world_size: int,
                 describe: str) -> None:
        self.source = source
        self.size = len(source)
        if self.size < world_size:
            raise DataError(f"{describe} has {self.size} samples, fewer than the "
                            f"{world_size} data-parallel ranks")
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.position = 0, 0
        self.guard = _EpochGuard(describe)
        self._order: tuple[int, np.ndarray] | None = None
        key = getattr(source, "key", None)
        self._key: Callable[[int], str] = key if callable(key) else (lambda i: f"#{i}")

    def order(self, epoch: int) -> np.ndarray:
        """This rank's indices for ``epoch``."""
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, permutation(self.size, self.seed, epoch)[self.rank::self.world_size])
        return self._order[1]

    def next(self) -> Item:
        """The next item; advances the position."""
        order = self.order(self.epoch)
        if self.position >= len(order):
            self.epoch, self.position = self.epoch + 1, 0
            order = self.order(self.epoch)
        index = int(order[self.position])
        self.position += 1
        self.guard.seen(self.epoch)
        source = self.source
        return Item(self.epoch, self._key(index), lambda: source.load(index),
                    derived_seed(self.seed, self.epoch, index))

    def state_dict(self) -> dict[str, Any]:
        """The position, plus what identifies the stream it belongs to."""
        return {"cursor": self.kind, "size": self.size, "epoch": self.epoch,
                "position": self.position, "good": self.guard.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Go back to a position from :meth:`state_dict`."""
        if state.get("size") != self.size:
            raise DataError(f"cannot resume: the saved data position is for a source of "
                            f"{state.get('size')} samples, this one has {self.size}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.guard.load_state_dict(state.get("good", {}))

    def close(self) -> None:
        """Nothing to release."""


class ShardCursor:
    """Position in the shuffled, rank-split stream of webdataset shards."""

    kind = "shards"

    def __init__(self, urls: list[str], seed: int, rank: int, world_size: int,
                 shuffle_buffer: int, describe: str) -> None:
        self.urls = urls
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.shuffle_buffer = max(1, shuffle_buffer)
        self.split_by_shard = len(urls) >= world_size
        self.epoch, self.shard_position, self.taken = 0, 0, 0
        self.guard = _EpochGuard(describe)
        self._items: Iterator[Item] | None = None

    def shard_order(self, epoch: int) -> list[int]:
        """Indices (into ``urls``) of the shards this rank reads in ``epoch``."""
        order = [int(i) for i in permutation(len(self.urls), self.seed, epoch)]
        return order[self.rank::self.world_size] if self.split_by_shard else order

    def raw_samples(self, shard: int) -> Iterator[RawSample]:
        """Raw samples of one shard in file order (this rank's share of them when split by sample)."""
        url = self.urls[shard]
        name = url.rsplit("/", 1)[-1]
        try:
            reader = ShardReader(url)
        except (OSError, DataError) as exc:
            yield name, CorruptSample("unreadable shard", f"{url}: {exc}", name)
            return
        try:
            for ordinal, (key, members) in enumerate(iter_tar_samples(reader.stream, name)):
                if self.split_by_shard or ordinal % self.world_size == self.rank:
                    yield f"{name}:{key}", members
            problem = reader.exit_problem()
            if problem:
                yield name, CorruptSample("unreadable shard", f"{url}: {problem}", name)
        finally:
            reader.close()

    def _shuffled(self, shard: int, epoch: int) -> Iterator[RawSample]:
        rng = random.Random(derived_seed(self.seed, epoch, shard))
        buffer: list[RawSample] = []
        for raw in self.raw_samples(shard):
            if len(buffer) < self.shuffle_buffer:
                buffer.append(raw)
                continue
            j = rng.randrange(len(buffer))
            buffer[j], raw = raw, buffer[j]
            yield raw
        rng.shuffle(buffer)
        yield from buffer

    def _generate(self) -> Iterator[Item]:
        while True:
            order = self.shard_order(self.epoch)
            self.guard.seen(self.epoch)
            fresh_epoch, produced = self.shard_position == 0 and self.taken == 0, 0
            while self.shard_position < len(order):
                shard, epoch, skip = order[self.shard_position], self.epoch, self.taken
                with contextlib.closing(self._shuffled(shard, epoch)) as raws:
                    for ordinal, (where, payload) in enumerate(raws):
                        if ordinal < skip:
                            continue
                        self.taken, produced = ordinal + 1, produced + 1
                        yield Item(epoch, where, decoder(where, payload),
                                   derived_seed(self.seed, epoch, shard, ordinal))
                self.shard_position, self.taken = self.shard_position + 1, 0
            if fresh_epoch and produced == 0:
                raise DataError(f"no samples at all in {self.guard.describe} "
                                f"(rank {self.rank} of {self.world_size}): its shards are empty")
            self.epoch, self.shard_position = self.epoch + 1, 0
            self.guard.seen(self.epoch)

    def next(self) -> Item:
        """The next item; advances the position."""
        if self._items is None:
            self._items = self._generate()
        return next(self._items)

    def state_dict(self) -> dict[str, Any]:
        """The position, plus what identifies the stream it belongs to."""
        return {"cursor": self.kind, "size": len(self.urls), "epoch": self.epoch,
                "shard_position": self.shard_position, "taken": self.taken,
                "shuffle_buffer": self.shuffle_buffer, "good": self.guard.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Go back to a position from :meth:`state_dict` (the current shard is re-read)."""
        if state.get("size") != len(self.urls):
            raise DataError(f"cannot resume: the saved data position is for {state.get('size')} "
                            f"shards, this spec names {len(self.urls)}")
        if state.get("shuffle_buffer") != self.shuffle_buffer:
            raise DataError(f"cannot resume: the saved data position used shuffle_buffer="
                            f"{state.get('shuffle_buffer')}, this loader {self.shuffle_buffer}")
        self.close()
        self.epoch = int(state["epoch"])
        self.shard_position, self.taken = int(state["shard_position"]), int(state["taken"])
        self.guard.load_state_dict(state.get("good", {}))

    def close(self) -> None:
        """Close the shard being read (and its subprocess, if any)."""
        if self._items is not None:
            self._items.close()  # type: ignore[attr-defined]
            self._items = None


def decoder(where: str, payload: dict[str, bytes] | CorruptSample) -> Callable[[], Sample]:
    """A thunk that decodes one raw webdataset sample (or raises why it cannot be used)."""
    def load() -> Sample:
        if isinstance(payload, CorruptSample):
            raise payload
        image, caption = sample_fields(payload, where)
        return Sample(caption=caption, image=image, key=where)
    return load
