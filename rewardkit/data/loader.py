"""The training data loader: infinite, deterministic, rank-sharded, resumable, corruption-tolerant.

>>> loader = build_loader("data-{00000..00009}.tar", resolution=512, batch_size=16, seed=0,
...                       rank=accelerator.process_index, world_size=accelerator.num_processes)
>>> batch = next(loader)       # {"pixel_values": [16, 3, 512, 512] in [-1, 1], "captions": [...], "keys": [...]}
>>> state = loader.state_dict()                  # JSON-serialisable; save one per rank
>>> loader2 = build_loader(...same arguments...); loader2.load_state_dict(state)
>>> next(loader2)              # exactly the batch the first loader yields next

A latent folder from ``rewardkit data encode`` gives ``{"latents": [B, C, h, w]}`` (already
scaled) instead of ``pixel_values``. Corrupt samples are skipped and counted
(``loader.skipped``, ``loader.report()``); a source with no readable sample at all, or a path that
does not exist, raises :class:`~rewardkit.errors.DataError`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from ..errors import ConfigError, DataError
from .cursors import Item
from .sample import CorruptSample
from .skips import SkipLog
from .sources import OpenedSource, open_source
from .transforms import ImageTransform, LatentTransform

STATE_VERSION = 1


class ResumableLoader:
    """An endless iterator of dict batches whose position can be saved and restored exactly.

    Build it with :func:`build_loader`. Epoch ``e`` is a reshuffle drawn from ``(seed, e)``;
    random crops and flips are drawn per sample from ``(seed, e, sample)``, so the batches do not
    depend on thread scheduling or on where a run was resumed.
    """

    def __init__(self, opened: OpenedSource, *, resolution: int, batch_size: int, seed: int,
                 rank: int, world_size: int, center_crop: bool, random_flip: bool,
                 num_workers: int = 0) -> None:
        self.opened = opened
        self.cursor = opened.cursor
        self.kind = opened.kind
        self.batch_key = "latents" if self.kind == "latents" else "pixel_values"
        self.resolution = resolution
        self.batch_size = batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.image_transform = ImageTransform(resolution, center_crop, random_flip)
        self.latent_transform = LatentTransform(random_flip)
        self.skips = SkipLog()
        self._pool = ThreadPoolExecutor(num_workers, "rewardkit-data") if num_workers > 0 else None

    # ------------------------------------------------------------ what it reads

    @property
    def vae_scaling_factor(self) -> float | None:
        """The factor stored latents were scaled by (latent sources), else None."""
        return self.opened.vae_scaling_factor

    @property
    def latent_shape(self) -> tuple[int, ...] | None:
        """``(C, h, w)`` of stored latents (latent sources), else None."""
        return self.opened.latent_shape

    @property
    def epoch(self) -> int:
        """The epoch the next sample comes from (counted per rank)."""
        return self.cursor.epoch

    @property
    def samples_per_epoch(self) -> int | None:
        """Samples this rank visits per epoch (random-access sources), None for streams."""
        order = getattr(self.cursor, "order", None)
        return len(order(self.cursor.epoch)) if order is not None else None

    # ------------------------------------------------------------ iteration

    def __iter__(self) -> "ResumableLoader":
        return self

    def _process(self, item: Item) -> tuple[torch.Tensor, str, str] | CorruptSample:
        try:
            sample = item.load()
            key = sample.key or item.where
            if not isinstance(sample.caption, str):
                raise CorruptSample("missing caption", "", key)
            if self.kind == "latents":
                if sample.latents is None:
                    raise CorruptSample("wrong sample kind", "an image where latents were expected", key)
                shape = tuple(sample.latents.shape)
                if self.latent_shape is not None and shape != self.latent_shape:
                    raise CorruptSample("wrong latent shape", f"{shape} != {self.latent_shape}", key)
                tensor = self.latent_transform(sample.latents, item.rng())
            else:
                if sample.image is None:
                    raise CorruptSample("wrong sample kind", "latents where an image was expected", key)
                tensor = self.image_transform(sample.image, item.rng())
            return tensor, sample.caption, key
        except CorruptSample as exc:
            return exc
        except Exception as exc:  # a source's own failure on one sample must not end the run
            return CorruptSample(f"load raised {type(exc).__name__}", str(exc), item.where)

    def __next__(self) -> dict[str, Any]:
        tensors: list[torch.Tensor] = []
        captions: list[str] = []
        keys: list[str] = []
        while len(tensors) < self.batch_size:
            # Take exactly as many items as are missing, so the position never runs ahead of
            # what the batches consumed (this is what makes resuming exact).
            items = [self.cursor.next() for _ in range(self.batch_size - len(tensors))]
            results = (self._pool.map(self._process, items) if self._pool is not None
                       else map(self._process, items))
            for item, result in zip(items, results):
                if isinstance(result, CorruptSample):
                    self.skips.add(result.reason, result.key or item.where)
                    continue
                self.cursor.guard.mark_good(item.epoch)
                self.skips.loaded += 1
                tensors.append(result[0])
                captions.append(result[1])
                keys.append(result[2])
            try:
                self.cursor.guard.check(self.cursor.epoch)
            except DataError as error:  # say why every sample was skipped
                raise DataError(f"{error} ({self.skips.reasons()}); fix or remove those "
                                "samples") from None
        return {self.batch_key: torch.stack(tensors), "captions": captions, "keys": keys}

    # ------------------------------------------------------------ resuming

    def state_dict(self) -> dict[str, Any]:
        """This rank's exact data position and skip counts (plain JSON-serialisable values)."""
        return {"version": STATE_VERSION, "kind": self.kind, "source": self.opened.describe,
                "seed": self.seed, "rank": self.rank, "world_size": self.world_size,
                "position": self.cursor.state_dict(), "skips": self.skips.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a position saved by :meth:`state_dict` on the same source and rank."""
        if state.get("source") != self.opened.describe:
            raise DataError(f"cannot resume data position: it was saved reading "
                            f"{state.get('source')!r}, this run reads {self.opened.describe!r}; resume "
                            "with the checkpoint's data source, or start a new run")
        for name in ("kind", "seed", "rank", "world_size"):
            if state.get(name) != getattr(self, name):
                raise DataError(f"cannot resume data position: it was saved with {name}="
                                f"{state.get(name)!r}, this loader has {name}="
                                f"{getattr(self, name)!r}")
        if state.get("position", {}).get("cursor") != self.cursor.kind:
            raise DataError("cannot resume data position: it was saved for a different kind of "
                            f"source ({state.get('position', {}).get('cursor')!r} vs {self.cursor.kind!r})")
        self.cursor.load_state_dict(state["position"])
        self.skips.load_state_dict(state.get("skips", {}))

    # ------------------------------------------------------------ reporting

    @property
    def skipped(self) -> dict[str, int]:
        """Skipped samples per reason, e.g. ``{"truncated or corrupt image": 2}``."""
        return dict(self.skips.counts)

    def report(self) -> str:
        """A summary of what was read and skipped, with example keys per reason."""
        return self.skips.summary(self.opened.describe) + f"\n  position: epoch {self.epoch}"

    def close(self) -> None:
        """Stop worker threads and close the shard being read."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.cursor.close()

    def __enter__(self) -> "ResumableLoader":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"ResumableLoader({self.opened.describe}, {self.batch_key}, batch_size="
                f"{self.batch_size}, rank {self.rank}/{self.world_size})")


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def build_loader(source: Any, *, resolution: int, batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, center_crop: bool = False, random_flip: bool = False,
                 num_workers: int = 0, shuffle_buffer: int = 1000,
                 vae_scaling_factor: float | None = None) -> ResumableLoader:
    """An infinite, resumable loader of training batches for this data-parallel rank.

    ``source``: webdataset shards (path, brace range, ``pipe:``/http URL, list), a folder of
    images with captions, a latent folder from ``rewardkit data encode``, or a
    :class:`~rewardkit.data.SampleSource`. ``center_crop=False`` crops at random (the
    reference's behaviour). ``num_workers`` threads decode in parallel without changing the
    batches. ``shuffle_buffer`` is the per-shard shuffle buffer of webdataset streams. Pass the
    teacher's ``vae_scaling_factor`` to have a latent folder encoded with another factor
    rejected.
    """
    _check_positive("resolution", resolution)
    _check_positive("batch_size", batch_size)
    _check_positive("world_size", world_size)
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ConfigError(f"rank must be in [0, world_size={world_size}), got {rank!r}")
    if num_workers < 0:
        raise ConfigError(f"num_workers must be >= 0, got {num_workers}")
    opened = open_source(source, seed=seed, rank=rank, world_size=world_size,
                         shuffle_buffer=shuffle_buffer)
    where = opened.manifest_path or opened.describe
    if (vae_scaling_factor is not None and opened.vae_scaling_factor is not None
            and abs(opened.vae_scaling_factor - vae_scaling_factor) > 1e-6):
        raise DataError(f"latents in {where} were scaled by {opened.vae_scaling_factor}, but the "
                        f"teacher's VAE scaling factor is {vae_scaling_factor}: re-encode them "
                        "with this teacher (`rewardkit data encode`)")
    if opened.resolution is not None and int(opened.resolution) != resolution:
        raise DataError(f"latents in {where} were encoded at resolution {opened.resolution}, "
                        f"but training asks for resolution {resolution}")
    return ResumableLoader(opened, resolution=resolution, batch_size=batch_size, seed=seed,
                           rank=rank, world_size=world_size, center_crop=center_crop,
                           random_flip=random_flip, num_workers=num_workers)
