"""The embedded world in ``rewardkit eval``: its test prompts (with real renders as the
reference images) and its Frechet distance, registered through the evaluation hooks.

``rewardkit eval rg-lcd-world/pipeline --prompts world --metrics world-judge,world-scorer,world-fd``
is the evaluation the default run's report makes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..errors import ConfigError
from ..evaluation.metrics import DistributionMetric, FeatureModule, ReferenceFeatures, _check, frechet_distance
from ..evaluation.prompt_sets import PromptSet
from ..sampling import pil_to_tensor
from .grammar import parse_caption
from .render import render
from .source import WorldSource

#: How many test prompts the world's evaluation (and its report) uses.
DEFAULT_NUM_IMAGES = 64


def evaluation_prompts(num_images: int = DEFAULT_NUM_IMAGES, split: str = "test", seed: int = 0) -> list[str]:
    """The captions of the first ``num_images`` samples of a world split (scenes cycle)."""
    source = WorldSource(split, size=num_images, seed=seed)
    return [source.scene(i).caption() for i in range(num_images)]


def real_images(prompts: Sequence[str], side: int, split: str = "test", seed: int = 0) -> torch.Tensor:
    """Real renders of ``prompts`` (``[N, 3, side, side]`` in [0, 1]).

    When ``prompts`` are exactly :func:`evaluation_prompts` of ``split``, these are that split's samples
    (:class:`~rewardkit.world.source.WorldSource`); other prompts are rendered with seeds 0..N-1.
    """
    prompts = list(prompts)
    source = WorldSource(split, size=len(prompts), side=side, seed=seed)
    if [source.scene(i).caption() for i in range(len(prompts))] == prompts:
        return pil_to_tensor([source.load(i).image for i in range(len(prompts))])
    arrays = []
    for index, prompt in enumerate(prompts):
        scene = parse_caption(prompt)
        if scene is None:
            raise ConfigError(f"prompt '{prompt}' is not a caption of the world's grammar, so it "
                              "has no real image for the Frechet distance")
        arrays.append(render(scene, seed + index, side=side))
    return pil_to_tensor(arrays)


class WorldPrompts:
    """The world's evaluation prompts: the first ``limit`` captions of a split, with that
    split's real renders as references (the world's FID compares with them).

    Args:
        limit: how many prompts (default 64, the report's).
        split: the world split (``test`` by default).
        seed: the split's seed.
    """

    name = "world"

    def __init__(self, limit: int | None = None, split: str = "test", seed: int = 0) -> None:
        self.limit = limit if limit is not None else DEFAULT_NUM_IMAGES
        self.split, self.seed = split, seed

    def load(self) -> PromptSet:
        """The captions and a reference-image callback."""
        prompts = evaluation_prompts(self.limit, self.split, self.seed)
        return PromptSet(self.name, prompts,
                         references=lambda side: real_images(prompts, side, self.split, self.seed),
                         source=f"world:{self.split} (seed {self.seed})")


class WorldFrechet(DistributionMetric):
    """The world's FID: the Frechet distance of the shipped feature net's pooled features
    (``WorldFeatureNet.features``), computed by torchmetrics.

    Args:
        features_path: a saved ``WorldFeatureNet`` folder (default: the shipped asset).
    """

    name = "world-fd"

    def __init__(self, features_path: str | None = None) -> None:
        from .assets import FEATURES, asset_path, load_net
        from .nets import WorldFeatureNet

        path = Path(features_path) if features_path else asset_path(FEATURES)
        net = load_net(WorldFeatureNet, path).eval()
        self.network = FeatureModule(net.features, net.trunk.out_features)
        self._references = ReferenceFeatures()

    def compute(self, generated: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
        """``{"world-fd": value}``."""
        _check(generated, reference, self.name)
        return {self.name: frechet_distance(self.network, generated, reference, cache=self._references)}
