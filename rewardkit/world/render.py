"""Deterministic rendering of world scenes to small RGB images (numpy only).

Shapes are drawn on a supersampled canvas and box-filtered down, so edges are anti-aliased the
way a photograph's are; positions and a small colour jitter come from the seed.
"""

from __future__ import annotations

import numpy as np

from .grammar import BACKGROUNDS, COLOURS, Scene

#: Shape radius as a fraction of the image side, per size word.
RADIUS = {"small": 0.17, "large": 0.28}
#: Radius factor when two shapes share the canvas.
PAIR_FACTOR = 0.72


def shape_mask(shape: str, centre: tuple[float, float], radius: float, side: int) -> np.ndarray:
    """Boolean mask of ``shape`` (circle, square, triangle) on a ``side`` x ``side`` canvas."""
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float64) + 0.5
    cy, cx = centre
    dy, dx = ys - cy, xs - cx
    if shape == "circle":
        return dx * dx + dy * dy <= radius * radius
    if shape == "square":
        half = radius * 0.886  # same area as the circle
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape == "triangle":
        # upright equilateral triangle inscribed in a circle of 1.2 radius
        r = radius * 1.2
        top, base = cy - r, cy + r / 2
        half_width = r * np.sqrt(3) / 2
        within_height = (ys >= top) & (ys <= base)
        fraction = np.clip((ys - top) / (base - top), 0, 1)
        return within_height & (np.abs(dx) <= fraction * half_width)
    raise ValueError(f"unknown shape '{shape}'")


def _centres(scene: Scene, radius: float, side: int, rng: np.random.Generator) -> list[tuple[float, float]]:
    margin = radius * 1.25
    centres: list[tuple[float, float]] = []
    for _ in range(200):
        candidate = tuple(rng.uniform(margin, side - margin, size=2))
        if all(np.hypot(candidate[0] - c[0], candidate[1] - c[1]) > 2.7 * radius for c in centres):
            centres.append(candidate)  # type: ignore[arg-type]
            if len(centres) == scene.count:
                return centres
    # a crowded canvas: fall back to fixed, non-overlapping slots
    slots = [(side * 0.5, side * 0.25), (side * 0.5, side * 0.75)]
    return slots[: scene.count]


def render(scene: Scene, seed: int, side: int = 32, supersample: int = 4) -> np.ndarray:
    """An ``side`` x ``side`` x 3 uint8 image of ``scene``; the same seed gives the same image."""
    rng = np.random.default_rng(seed)
    big = side * supersample
    radius = RADIUS[scene.size] * big * (PAIR_FACTOR if scene.count > 1 else 1.0)
    jitter = rng.integers(-12, 13, size=3)
    background = np.clip(np.array(BACKGROUNDS[scene.background]) + rng.integers(-8, 9, size=3), 0, 255)
    colour = np.clip(np.array(COLOURS[scene.colour]) + jitter, 0, 255)
    canvas = np.empty((big, big, 3), dtype=np.float64)
    canvas[:] = background
    for centre in _centres(scene, radius, big, rng):
        canvas[shape_mask(scene.shape, centre, radius, big)] = colour
    small = canvas.reshape(side, supersample, side, supersample, 3).mean(axis=(1, 3))
    return np.round(small).astype(np.uint8)
