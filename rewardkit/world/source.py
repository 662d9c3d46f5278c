"""The world as a data source: procedurally rendered image-caption pairs, by index.

:class:`WorldSource` implements :class:`rewardkit.data.sample.SampleSource`, so the training loop
reads it like any dataset; sample ``i`` is always the same image and caption for a given seed.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import numpy as np

from ..data.sample import Sample
from ..errors import ConfigError
from .grammar import Scene, make_splits
from .render import render

SPLITS = ("train", "validation", "test")
WORLD_SCHEME = "world:"


class WorldSource:
    """``size`` rendered samples of one caption split (scenes cycle; placements differ)."""

    def __init__(self, split: str = "train", size: int = 50_000, side: int = 32, seed: int = 0) -> None:
        if split not in SPLITS:
            raise ConfigError(f"world split must be one of {', '.join(SPLITS)}, got '{split}'")
        if size < 1:
            raise ConfigError(f"world size must be positive, got {size}")
        self.split, self.size, self.side, self.seed = split, size, side, seed
        self.scenes: tuple[Scene, ...] = getattr(make_splits(seed), split)
        offset = SPLITS.index(split) * 10_000_019  # different splits never share render seeds
        self._render_seeds = np.random.default_rng(seed + offset).integers(0, 2**31 - 1, size=size)

    def __len__(self) -> int:
        return self.size

    def scene(self, index: int) -> Scene:
        return self.scenes[index % len(self.scenes)]

    def load(self, index: int) -> Sample:
        scene = self.scene(index)
        image = render(scene, int(self._render_seeds[index]), side=self.side)
        return Sample(caption=scene.caption(), image=image, key=f"world-{self.split}-{index}")

    def captions(self) -> list[str]:
        """The split's distinct captions, in order."""
        return [scene.caption() for scene in self.scenes]


def is_world_spec(value: Any) -> bool:
    """True for strings like ``"world:train"``."""
    return isinstance(value, str) and value.startswith(WORLD_SCHEME)


def world_source_from_spec(spec: Any, side: int | None = None) -> WorldSource | None:
    """The :class:`WorldSource` a ``"world:SPLIT[?size=N&side=S&seed=K]"`` string names.

    Returns ``None`` for anything that is not a world spec (so callers can fall through to the
    other data sources). ``side`` (e.g. the training resolution) is used when the spec has none.
    """
    if not is_world_spec(spec):
        return None
    body = spec[len(WORLD_SCHEME):]
    split, _, query = body.partition("?")
    split = split or "train"
    if split not in SPLITS:
        raise ConfigError(f"train_shards_path_or_url: '{spec}' names no world split; use one of "
                          + ", ".join(f"world:{s}" for s in SPLITS))
    options: dict[str, int] = {}
    for key, values in parse_qs(query, keep_blank_values=True).items():
        if key not in ("size", "side", "seed"):
            raise ConfigError(f"train_shards_path_or_url: unknown option '{key}' in '{spec}' "
                              "(world sources take size, side and seed)")
        try:
            options[key] = int(values[-1])
        except ValueError:
            raise ConfigError(f"train_shards_path_or_url: {key} must be an integer in "
                              f"'{spec}'") from None
    if "side" not in options and side is not None:
        options["side"] = side
    return WorldSource(split, **options)


class WorldData:
    """The embedded world's renders and captions, as world:SPLIT[?size=N&side=S&seed=K].

    Registered through the ``register_data_sources`` hook under the scheme ``world``.
    """

    name = "world"

    @classmethod
    def from_spec(cls, spec: str, resolution: int | None = None) -> WorldSource:
        """The :class:`WorldSource` of ``spec``, rendered at ``resolution`` unless the spec
        sets ``side``; a bad spec raises :class:`~rewardkit.errors.ConfigError` naming it."""
        source = world_source_from_spec(spec, side=resolution)
        if source is None:
            raise ConfigError(f"'{spec}' is not a world spec (world:train, world:validation, ...)")
        return source
