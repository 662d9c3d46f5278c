"""HPSv2's evaluation preprocessing, written in torch so gradients reach the images.

HPSv2's validation transform (``hpsv2.src.open_clip.transform``, ``resize_longest_max=True``) is
``ResizeMaxSize(224, bicubic, fill=0)`` then ``MaskAwareNormalize(OpenAI mean, std)``: resize the
LONGEST side to 224, pad the short side to a square with 0 (before normalising), normalise.

It resizes a *tensor* (``ToTensor`` comes first), so whether the bicubic resize antialiases is
torchvision's default of the day: not before torchvision 0.17, when HPSv2 was trained and its
scores published; yes since. ``antialias=False`` (the default here) is the former.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def resize_longest_and_pad(images: torch.Tensor, size: int, antialias: bool = False) -> torch.Tensor:
    """Resize ``images`` (NCHW) so the longest side is ``size`` (bicubic), then zero-pad to square.

    The padding is split as in HPSv2 (``pad // 2`` before, the rest after). Unlike HPSv2's
    ``ResizeMaxSize``, a non-square image whose longest side already equals ``size`` is padded
    too, so the output is always ``size x size``.
    """
    height, width = images.shape[-2:]
    scale = size / float(max(height, width))
    new_h, new_w = round(height * scale), round(width * scale)
    if (new_h, new_w) != (height, width):
        images = F.interpolate(images, size=(new_h, new_w), mode="bicubic",
                               align_corners=False, antialias=antialias)
    pad_h, pad_w = size - new_h, size - new_w
    if pad_h or pad_w:
        images = F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2),
                       value=0.0)
    return images


def normalize(images: torch.Tensor, mean=OPENAI_MEAN, std=OPENAI_STD) -> torch.Tensor:
    """Per-channel ``(x - mean) / std``, in the images' dtype and device."""
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean_t) / std_t


def hps_preprocess(images: torch.Tensor, size: int = 224, antialias: bool = False) -> torch.Tensor:
    """Images in [0, 1] (NCHW) -> HPSv2 model input: longest side to ``size``, zero-pad, normalise."""
    return normalize(resize_longest_and_pad(images, size, antialias=antialias))
