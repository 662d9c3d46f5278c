"""ImageReward's image preprocessing, in torch so gradients reach the images.

ImageReward's ``_transform(224)``: ``Resize(224, bicubic)`` (the SHORTER side to 224, the other
``int(224 * long / short)``, as torchvision computes it), ``CenterCrop(224)``, CLIP normalisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resize_shorter_and_center_crop(images: torch.Tensor, size: int,
                                   antialias: bool = True) -> torch.Tensor:
    """Bicubic resize of NCHW ``images`` (shorter side to ``size``), then a central square crop."""
    height, width = images.shape[-2:]
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    if (new_h, new_w) != (height, width):
        images = F.interpolate(images, size=(new_h, new_w), mode="bicubic",
                               align_corners=False, antialias=antialias)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return images[..., top:top + size, left:left + size]


def normalize(images: torch.Tensor, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """Per-channel ``(x - mean) / std``, in the images' dtype and device."""
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean_t) / std_t


def imagereward_preprocess(images: torch.Tensor, size: int = 224,
                           antialias: bool = True) -> torch.Tensor:
    """Images in [0, 1] (NCHW) -> ImageReward input: resize, centre crop, normalise."""
    return normalize(resize_shorter_and_center_crop(images, size, antialias=antialias))
