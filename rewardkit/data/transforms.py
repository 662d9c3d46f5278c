"""Image and latent transforms in torch and PIL (no torchvision).

The pixel pipeline matches the reference's torchvision one: convert to RGB, resize the shorter
side to ``resolution`` (bilinear, antialiased; the longer side is truncated like
``transforms.Resize(int)``), crop ``resolution x resolution`` (centre, or random), optionally flip
horizontally, and scale to a ``[-1, 1]`` CHW float tensor. PIL images are resized by PIL (what
torchvision does for PIL inputs); tensors by ``F.interpolate(antialias=True)``.

Randomness comes from a ``random.Random`` the loader seeds per sample, so a sample's crop and
flip depend only on (seed, epoch, sample), not on thread scheduling or on where a run resumed.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


#: 16-bit integer greyscale modes; PIL opens 16-bit PNGs as one of these (or as "I").
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def pil_to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of a PIL image of any mode, scaling high-bit-depth modes.

    ``convert("RGB")`` clips instead of scaling: a 16-bit greyscale PNG (``I;16*``, or ``I``,
    the 32-bit integer mode PIL also uses for 16-bit files) comes out nearly white, a float image
    (``F``) black or white. Here ``I;16*`` and ``I`` are read as 0..65535 and ``F`` as 0..1
    (clipped), then scaled to 0..255; every other mode goes through ``convert("RGB")`` (palette,
    bilevel, CMYK, YCbCr, alpha dropped as the reference's torchvision pipeline does).
    """
    if image.mode == "RGB":
        return image
    if image.mode in SIXTEEN_BIT_MODES or image.mode == "I":
        values = np.asarray(image, dtype=np.float64) / 65535.0
    elif image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
    else:
        return image.convert("RGB")
    grey = np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def to_rgb_tensor_or_image(image: Any) -> Image.Image | torch.Tensor:
    """An RGB PIL image (:func:`pil_to_rgb`), or a float ``[3, H, W]`` tensor in ``[0, 1]``."""
    if isinstance(image, Image.Image):
        return pil_to_rgb(image)
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.array(image))  # a copy: the array may be read-only
        image = image.unsqueeze(0) if image.ndim == 2 else image.permute(2, 0, 1)
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"an image must be a PIL image, a numpy array or a tensor, "
                        f"not {type(image).__name__}")
    if image.ndim == 2:
        image = image.unsqueeze(0)
    if image.ndim != 3 or image.shape[0] not in (1, 3, 4):
        raise ValueError(f"an image tensor must be [C, H, W] with C in 1, 3, 4; got {tuple(image.shape)}")
    image = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    return image[:3]


def shorter_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(H, W) with the shorter side ``size`` and the aspect ratio kept (torchvision's rounding)."""
    if height <= width:
        return size, max(int(size * width / height), size)
    return max(int(size * height / width), size), size


def resize_shorter_side(image: Image.Image | torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear, antialiased resize so the shorter side is ``size``; returns float CHW in [0, 1]."""
    if isinstance(image, Image.Image):
        height, width = shorter_side_size(image.height, image.width, size)
        if (height, width) != (image.height, image.width):
            image = image.resize((width, height), Image.BILINEAR)
        array = np.asarray(image, dtype=np.uint8)
        return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0
    height, width = shorter_side_size(image.shape[-2], image.shape[-1], size)
    if (height, width) == tuple(image.shape[-2:]):
        return image
    resized = F.interpolate(image.unsqueeze(0), size=(height, width), mode="bilinear",
                            align_corners=False, antialias=True)
    return resized.squeeze(0).clamp(0.0, 1.0)


def crop_square(image: torch.Tensor, size: int, rng: random.Random | None) -> torch.Tensor:
    """A ``size x size`` crop: centred when ``rng`` is None, else at a random offset."""
    height, width = image.shape[-2:]
    if rng is None:
        top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    else:
        top, left = rng.randint(0, height - size), rng.randint(0, width - size)
    return image[..., top:top + size, left:left + size]


class ImageTransform:
    """Pixels in, a ``[3, resolution, resolution]`` float tensor in ``[-1, 1]`` out."""

    def __init__(self, resolution: int, center_crop: bool = False, random_flip: bool = False) -> None:
        if resolution <= 0:
            raise ValueError(f"resolution must be positive, got {resolution}")
        self.resolution = resolution
        self.center_crop = center_crop
        self.random_flip = random_flip

    def __call__(self, image: Any, rng: random.Random) -> torch.Tensor:
        """Transform one image; ``rng`` drives the random crop and flip."""
        pixels = resize_shorter_side(to_rgb_tensor_or_image(image), self.resolution)
        pixels = crop_square(pixels, self.resolution, None if self.center_crop else rng)
        if self.random_flip and rng.random() < 0.5:
            pixels = pixels.flip(-1)
        return pixels.mul(2.0).sub(1.0).contiguous()


class LatentTransform:
    """Latents are returned as stored (already scaled); optionally flipped left-right."""

    def __init__(self, random_flip: bool = False) -> None:
        self.random_flip = random_flip

    def __call__(self, latents: torch.Tensor, rng: random.Random) -> torch.Tensor:
        """Transform one ``[C, h, w]`` latent."""
        latents = latents.float()
        if self.random_flip and rng.random() < 0.5:
            latents = latents.flip(-1)
        return latents.contiguous()
