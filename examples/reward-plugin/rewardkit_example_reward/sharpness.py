"""Image sharpness (variance of the Laplacian) as a differentiable reward model."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from rewardkit.errors import RewardModelError
from rewardkit.rewards import RewardModel

#: The 4-neighbour discrete Laplacian.
LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
#: ITU-R BT.601 luma weights.
LUMA = torch.tensor([0.299, 0.587, 0.114])


class Sharpness(RewardModel):
    """Variance of the Laplacian of the luma: higher means more fine detail and crisper edges.

    The classic focus measure (Pech-Pacheco et al., 2000). Blur lowers it, noise raises it, so
    it is a reward to be hacked on purpose: a good demonstration of reward over-optimisation.

    Args:
        log: return ``log(variance + eps)`` (a better-scaled reward) instead of the variance.
        eps: keeps the logarithm finite on flat images.
    """

    name = "sharpness"
    input_space = "pixels"
    differentiable = True

    def __init__(self, log: bool = True, eps: float = 1e-6) -> None:
        self.log = log
        self.eps = eps

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Sharpness of each image of ``images`` ([B, 3, H, W] in [0, 1]); prompts unused."""
        if images.shape[-1] < 3 or images.shape[-2] < 3:
            raise RewardModelError(f"reward model '{self.name}' needs images of at least 3x3 "
                                   f"pixels, got {tuple(images.shape[-2:])}")
        images = images.float()
        luma = torch.einsum("bchw,c->bhw", images, LUMA.to(images.device)).unsqueeze(1)
        kernel = LAPLACIAN.to(images.device).view(1, 1, 3, 3)
        response = F.conv2d(luma, kernel).flatten(1)  # valid region only: no border artefacts
        variance = response.var(dim=1, unbiased=False)
        return torch.log(variance + self.eps) if self.log else variance
