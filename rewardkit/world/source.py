"""The world as a data source: procedurally rendered image-caption pairs, by index.

:class:`WorldSource` implements :class:`rewardkit.data.sample.SampleSource`, so the training loop
reads it like any dataset; sample ``i`` is always the same image and caption for a given seed.
"""

from __future__ import annotations

import numpy as np

from ..data.sample import Sample
from .grammar import Scene, make_splits
from .render import render

SPLITS = ("train", "validation", "test")


class WorldSource:
    """``size`` rendered samples of one caption split (scenes cycle; placements differ)."""

    def __init__(self, split: str = "train", size: int = 50_000, side: int = 32, seed: int = 0) -> None:
        from ..errors import ConfigError

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
