"""The embedded world in ``rewardkit eval``: its test prompts (with real renders as the
reference images) and its Frechet distance, registered through the evaluation hooks.

``rewardkit eval rg-lcd-world/pipeline --prompts world --metrics world-judge,world-proxy,world-fd``
is the evaluation the default run's report makes.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..evaluation.metrics import DistributionMetric, FeatureModule, ReferenceFeatures, _check, frechet_distance
from ..evaluation.prompt_sets import PromptSet


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
        from .evaluate import DEFAULT_NUM_IMAGES

        self.limit = limit if limit is not None else DEFAULT_NUM_IMAGES
        self.split, self.seed = split, seed

    def load(self) -> PromptSet:
        """The captions and a reference-image callback."""
        from .evaluate import evaluation_prompts, real_images

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
