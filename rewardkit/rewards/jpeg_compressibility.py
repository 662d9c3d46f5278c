"""``jpeg-compressibility``: ddpo-pytorch's classic non-differentiable reward.

Each image is quantised to 8 bits, encoded as JPEG (quality 95 by default) with PIL, and scored
``-size_in_kB`` (kB = 1000 bytes), so smaller files (smoother, simpler images) score higher.
It ignores the prompt, runs in numpy/PIL and claims ``differentiable = False``: use it as the
expert of the latent proxy RM (LRM), never for direct optimisation.
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .base import RewardModel


def to_uint8_images(images: torch.Tensor) -> np.ndarray:
    """[0, 1] float NCHW tensor -> uint8 NHWC array (rounded, clipped), detached on the CPU."""
    array = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return array.transpose(0, 2, 3, 1)


def jpeg_size_kb(image: np.ndarray, quality: int = 95) -> float:
    """Size in kB (1000 bytes) of an HWC uint8 RGB image encoded as JPEG at ``quality``."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.tell() / 1000.0


class JpegCompressibility(RewardModel):
    """Negative JPEG file size in kB (ddpo-pytorch's compressibility reward; not differentiable)."""

    name = "jpeg-compressibility"
    input_space = "pixels"
    differentiable = False
    logit_scale = None

    def __init__(self, quality: int = 95) -> None:
        """``quality``: the JPEG quality used for encoding (1-95)."""
        self.quality = int(quality)

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """``-size_kB`` per image, shape ``[B]`` (prompts are not used)."""
        sizes = [jpeg_size_kb(image, self.quality) for image in to_uint8_images(images)]
        return -torch.tensor(sizes, dtype=torch.float32, device=images.device)
