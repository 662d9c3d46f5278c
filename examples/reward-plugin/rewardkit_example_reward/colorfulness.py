"""The Hasler–Süsstrunk colourfulness metric as a differentiable reward model."""

from __future__ import annotations

from typing import Sequence

import torch
from rewardkit.rewards import RewardModel


class Colorfulness(RewardModel):
    """Hasler–Süsstrunk colourfulness: 0 for grey images, higher for vivid colours.

    With ``rg = R - G`` and ``yb = (R + G) / 2 - B`` over the pixels of one image::

        colourfulness = sqrt(std(rg)^2 + std(yb)^2) + 0.3 * sqrt(mean(rg)^2 + mean(yb)^2)

    (D. Hasler and S. Süsstrunk, "Measuring colourfulness in natural images", 2003). Images are
    RGB in [0, 1], so scores are the paper's 0-255 values divided by 255; pass ``scale=255`` to
    get the paper's scale (about 33 is "moderately colourful", 59 "quite colourful").

    Args:
        scale: multiplies the score.
        eps: added under the square roots so that gradients stay finite on flat images.
    """

    name = "colorfulness"
    input_space = "pixels"
    differentiable = True

    def __init__(self, scale: float = 1.0, eps: float = 1e-8) -> None:
        self.scale = scale
        self.eps = eps

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Colourfulness of each image of ``images`` ([B, 3, H, W] in [0, 1]); prompts unused."""
        r, g, b = images.float().flatten(2).unbind(1)  # each [B, H*W]
        rg = r - g
        yb = 0.5 * (r + g) - b
        spread = torch.sqrt(rg.var(dim=1, unbiased=False) + yb.var(dim=1, unbiased=False) + self.eps)
        centre = torch.sqrt(rg.mean(dim=1) ** 2 + yb.mean(dim=1) ** 2 + self.eps)
        return self.scale * (spread + 0.3 * centre)
