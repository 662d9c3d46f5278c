"""The two images of a pair as the page shows them: nothing that tells the models apart.

Both are read from their PNG files the same way, copied into fresh RGB images (no file name, no
metadata such as a PNG text chunk survives) and brought to one square size, nearest-neighbour
when a small image is enlarged by a whole factor (the embedded world's 32 px samples stay
sharp), bicubic otherwise. The page sends them as PNG, whose cached name is a hash of the
pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError


def blind_image(path: Path, side: int) -> Any:
    """The image at ``path`` as a fresh ``side x side`` RGB ``PIL.Image`` without metadata."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"study image {path} cannot be read ({exc}); delete it and start "
                          "rewardkit vote again to sample it again") from None
    fresh = Image.fromarray(pixels.copy(), mode="RGB")
    height, width = pixels.shape[:2]
    if (width, height) == (side, side):
        return fresh
    whole = side % width == 0 and side % height == 0 and width == height
    return fresh.resize((side, side), Image.NEAREST if whole else Image.BICUBIC)


def display_side(*paths: Path, minimum: int = 256) -> int:
    """One side for every image of a pair: the largest side among them, at least ``minimum``
    rounded up to a whole multiple of the smallest square image's side."""
    from PIL import Image

    sides = []
    for path in paths:
        try:
            with Image.open(path) as image:
                sides.append(max(image.size))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"study image {path} cannot be read ({exc}); delete it and start "
                              "rewardkit vote again to sample it again") from None
    largest = max(sides)
    if largest >= minimum:
        return largest
    small = min(sides)
    return -(-minimum // small) * small


def blind_pair(left: Path, right: Path, side: int = 256) -> tuple[Any, Any]:
    """``(left, right)`` as :func:`blind_image` at one common side (at least ``side``)."""
    common = display_side(left, right, minimum=side)
    return blind_image(left, common), blind_image(right, common)


__all__ = ["blind_image", "blind_pair", "display_side"]
