"""Captions as attribute indices, the text input of the world's learned networks."""

from __future__ import annotations

from typing import Sequence

import torch

from .grammar import BACKGROUNDS, COLOURS, SHAPES, SIZES, parse_caption

#: Each attribute's vocabulary; index 0 of every attribute means "not in the grammar".
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "count": ("?", "1", "2"),
    "size": ("?",) + SIZES,
    "colour": ("?",) + tuple(COLOURS),
    "shape": ("?",) + SHAPES,
    "background": ("?",) + tuple(BACKGROUNDS),
}


def encode_captions(captions: Sequence[str]) -> torch.Tensor:
    """``[B, 5]`` long tensor of attribute indices (count, size, colour, shape, background)."""
    rows = []
    for caption in captions:
        scene = parse_caption(caption)
        if scene is None:
            rows.append([0] * len(ATTRIBUTES))
            continue
        values = {"count": str(scene.count), "size": scene.size, "colour": scene.colour,
                  "shape": scene.shape, "background": scene.background}
        rows.append([ATTRIBUTES[name].index(values[name]) for name in ATTRIBUTES])
    return torch.tensor(rows, dtype=torch.long)
