"""Small convolutional networks trained on the world: the learned scorer RM and the feature net.

Both see images in [0, 1] (any side that is a multiple of 4) and are tiny enough to train in a
minute or two on a laptop CPU.
"""

from __future__ import annotations

import torch
from torch import nn

from .scene_codes import ATTRIBUTES


class ConvTrunk(nn.Module):
    """Three conv stages and global average pooling: ``[B, 3, H, W] -> [B, width * 4]``."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, width * 2, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(width * 2, width * 4, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(width * 4, width * 4, 3, padding=1), nn.GELU(),
        )
        self.out_features = width * 4

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images * 2 - 1).mean(dim=(2, 3))


class WorldScorerNet(nn.Module):
    """Regresses the world judge's score from an image and its caption's attributes."""

    def __init__(self, width: int = 32, attribute_dim: int = 32) -> None:
        super().__init__()
        self.config = {"width": width, "attribute_dim": attribute_dim}
        self.trunk = ConvTrunk(width)
        self.attributes = nn.ModuleList(nn.Embedding(len(v), attribute_dim) for v in ATTRIBUTES.values())
        hidden = self.trunk.out_features + attribute_dim * len(ATTRIBUTES)
        self.head = nn.Sequential(nn.Linear(hidden, 128), nn.GELU(), nn.Linear(128, 1))

    def forward(self, images: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        attributes = torch.cat([emb(codes[:, i]) for i, emb in enumerate(self.attributes)], dim=1)
        return self.head(torch.cat([self.trunk(images), attributes], dim=1))[:, 0]


class WorldFeatureNet(nn.Module):
    """Classifies every caption attribute from the image; its pooled trunk gives Frechet features."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.config = {"width": width}
        self.trunk = ConvTrunk(width)
        self.heads = nn.ModuleList(nn.Linear(self.trunk.out_features, len(v) - 1) for v in ATTRIBUTES.values())

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` features for the Frechet distance."""
        return self.trunk(images)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        features = self.trunk(images)
        return [head(features) for head in self.heads]
