"""The caption grammar of the embedded world: scenes, their captions, and the prompt splits.

A scene is one or two shapes of one colour on a plain background. Captions are generated from a
scene and parsed back into one, so judges can check an image against the caption's claims::

    "a large red triangle on a blue background"
    "two small green circles on a white background"

Some (colour, shape) combinations are held out of the training split, so a student that only
memorised the training captions is caught by the test split.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Iterator

#: Colour names and their RGB values (0-255).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 50, 170),
    "orange": (245, 140, 30),
}
#: Background names and their RGB values (0-255); disjoint from the shape colours except blue.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
    "blue": (40, 80, 220),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "large")
COUNTS: dict[str, int] = {"a": 1, "two": 2}

#: (colour, shape) pairs never seen in training captions.
HELD_OUT: frozenset[tuple[str, str]] = frozenset({("purple", "triangle"), ("orange", "circle")})


@dataclass(frozen=True)
class Scene:
    """What a caption claims: count x size x colour x shape on a background."""

    count: int
    size: str
    colour: str
    shape: str
    background: str

    def caption(self) -> str:
        """The canonical caption of this scene."""
        article = "a" if self.count == 1 else "two"
        plural = "s" if self.count > 1 else ""
        return f"{article} {self.size} {self.colour} {self.shape}{plural} on a {self.background} background"

    @property
    def held_out(self) -> bool:
        return (self.colour, self.shape) in HELD_OUT


_CAPTION = re.compile(
    r"^(?P<count>a|two) (?P<size>\w+) (?P<colour>\w+) (?P<shape>\w+?)s? on a (?P<bg>\w+) background$")


def parse_caption(caption: str) -> Scene | None:
    """The scene a caption describes, or ``None`` if it is not in the grammar."""
    match = _CAPTION.match(caption.strip().lower())
    if not match:
        return None
    count = COUNTS[match["count"]]
    scene = Scene(count, match["size"], match["colour"], match["shape"], match["bg"])
    if (scene.size not in SIZES or scene.colour not in COLOURS or scene.shape not in SHAPES
            or scene.background not in BACKGROUNDS or scene.colour == scene.background):
        return None
    return scene


def all_scenes() -> Iterator[Scene]:
    """Every valid scene, in a fixed order (a shape never has its background's colour)."""
    for count in COUNTS.values():
        for size in SIZES:
            for colour in COLOURS:
                for shape in SHAPES:
                    for background in BACKGROUNDS:
                        if colour != background:
                            yield Scene(count, size, colour, shape, background)


@dataclass(frozen=True)
class Splits:
    """Caption splits: train never contains a held-out (colour, shape) pair."""

    train: tuple[Scene, ...]
    validation: tuple[Scene, ...]
    test: tuple[Scene, ...]


def make_splits(seed: int = 0, validation_fraction: float = 0.1) -> Splits:
    """Split the scenes: held-out pairs go to test; the rest is split train/validation/test."""
    scenes = list(all_scenes())
    held = [s for s in scenes if s.held_out]
    seen = [s for s in scenes if not s.held_out]
    rng = random.Random(seed)
    rng.shuffle(seen)
    n_val = max(1, int(len(seen) * validation_fraction))
    validation, test_seen, train = seen[:n_val], seen[n_val:2 * n_val], seen[2 * n_val:]
    return Splits(tuple(train), tuple(validation), tuple(test_seen + held))
