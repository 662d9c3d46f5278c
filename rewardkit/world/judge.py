"""The world's rule-based judge: does an image show what its caption says, and is it well drawn?

Numpy only and deliberately **non-differentiable**: it plays the part of a human-preference RM
that can only be queried. Each image gets a score in [0, 1] that adds up:

========== ====== ==========================================================================
term       weight what it checks
========== ====== ==========================================================================
background 0.20   the border's colour is the caption's background colour
colour     0.25   the foreground's colour is the caption's shape colour
count      0.15   the number of blobs is the caption's count
shape      0.20   each blob's fill of its bounding box matches the shape (square ~1, circle
                  ~0.79, triangle ~0.5)
size       0.05   blob area is near the size word's area
crispness  0.15   the preference term: few "muddy" pixels that are neither background nor
                  shape colour (blurry, noisy or smeared drawings lose it)
========== ====== ==========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .grammar import BACKGROUNDS, COLOURS, Scene, parse_caption
from .render import PAIR_FACTOR, RADIUS

WEIGHTS = {"background": 0.20, "colour": 0.25, "count": 0.15, "shape": 0.20, "size": 0.05,
           "crispness": 0.15}
#: Expected fill of the bounding box, per shape (from the renderer's geometry).
FILL = {"square": 1.0, "circle": np.pi / 4, "triangle": 0.5}


@dataclass
class Verdict:
    """The judge's score and its terms, each in [0, 1]."""

    score: float
    terms: dict[str, float]


def _as_rgb255(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] == 3 and image.shape[-1] != 3:  # CHW
        image = image.transpose(1, 2, 0)
    if image.dtype != np.uint8:
        image = np.clip(image, 0.0, 1.0) * 255.0
    return image.astype(np.float64)


def _components(mask: np.ndarray, min_size: int) -> list[np.ndarray]:
    """4-connected components of ``mask`` with at least ``min_size`` pixels (as index arrays)."""
    height, width = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    found = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        stack, pixels = [(y0, x0)], []
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            pixels.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        if len(pixels) >= min_size:
            found.append(np.array(pixels))
    return found


def judge(image: np.ndarray, caption: str) -> Verdict:
    """Judge one image (HWC or CHW; uint8, or float in [0, 1]) against its caption."""
    rgb = _as_rgb255(image)
    side = rgb.shape[0]
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    background = np.median(border, axis=0)
    distance_to_bg = np.linalg.norm(rgb - background, axis=-1)
    # the shape colour: the median of the pixels farthest from the background
    far = distance_to_bg > max(40.0, 0.7 * float(np.percentile(distance_to_bg, 99.5)))
    fg_colour = np.median(rgb[far], axis=0) if far.any() else None
    # a pixel is foreground when it is closer to the shape colour than to the background
    contrast = float(np.linalg.norm(fg_colour - background)) if fg_colour is not None else np.inf
    foreground = distance_to_bg > max(30.0, 0.5 * contrast)

    scene = parse_caption(caption)
    terms = {name: 0.0 for name in WEIGHTS}
    if scene is not None:
        terms["background"] = _closeness(background, BACKGROUNDS[scene.background], 60.0)
        terms["colour"] = 0.0 if fg_colour is None else _closeness(fg_colour, COLOURS[scene.colour], 70.0)
        blobs = _components(foreground, min_size=max(3, side * side // 400))
        terms["count"] = 1.0 if len(blobs) == scene.count else 0.0
        terms["shape"] = _shape_term(blobs, scene)
        terms["size"] = _size_term(blobs, scene, side)
        colour_ref = fg_colour if fg_colour is not None else np.array(COLOURS[scene.colour])
        terms["crispness"] = _crispness(rgb, background, colour_ref)
    else:
        terms["crispness"] = _crispness(rgb, background, None)
    score = sum(WEIGHTS[name] * value for name, value in terms.items())
    return Verdict(float(score), terms)


def _closeness(observed: np.ndarray, expected: tuple[int, int, int], scale: float) -> float:
    return float(np.exp(-np.linalg.norm(np.asarray(observed) - np.array(expected)) / scale))


def _shape_term(blobs: list[np.ndarray], scene: Scene) -> float:
    if not blobs:
        return 0.0
    hits = []
    for pixels in blobs:
        height = pixels[:, 0].max() - pixels[:, 0].min() + 1
        width = pixels[:, 1].max() - pixels[:, 1].min() + 1
        fill = len(pixels) / float(height * width)
        nearest = min(FILL, key=lambda shape: abs(FILL[shape] - fill))
        hits.append(1.0 if nearest == scene.shape else 0.0)
    return float(np.mean(hits))


def _size_term(blobs: list[np.ndarray], scene: Scene, side: int) -> float:
    if not blobs:
        return 0.0
    radius = RADIUS[scene.size] * side * (PAIR_FACTOR if scene.count > 1 else 1.0)
    expected = np.pi * radius * radius * FILL[scene.shape] / FILL["circle"]
    observed = float(np.mean([len(p) for p in blobs]))
    return float(np.exp(-abs(np.log(max(observed, 1.0) / expected))))


def _crispness(rgb: np.ndarray, background: np.ndarray, colour: np.ndarray | None) -> float:
    near_bg = np.linalg.norm(rgb - background, axis=-1) < 40
    near_fg = np.linalg.norm(rgb - colour, axis=-1) < 40 if colour is not None else np.zeros_like(near_bg)
    clean = (near_bg | near_fg).mean()
    # the renderer's anti-aliased edges leave ~5-10% in-between pixels: full marks from 90% clean
    return float(np.clip((clean - 0.5) / 0.4, 0.0, 1.0))
