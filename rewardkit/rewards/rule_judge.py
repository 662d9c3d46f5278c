"""``rule-judge``: a transparent, rule-based judge of prompt-colour agreement (non-differentiable).

A stand-in for black-box judges (an API, a VLM, a human rater) in tests and demos. For each
image it:

1. finds the colour words of the prompt (``red``, ``green``, ``blue``, ``yellow``, ``orange``,
   ``purple``, ``pink``, ``brown``, ``black``, ``white``, ``gray``/``grey``);
2. measures, for each named colour, the fraction of pixels within ``tolerance`` (Euclidean
   distance in RGB, [0, 1] units) of that colour's reference RGB value, and averages over the
   named colours (a prompt without colour words gets 0 for this term);
3. subtracts ``clip_penalty`` times the fraction of channel values clipped at 0 or 1 (within
   half a quantisation step), which penalises blown-out or crushed images.

``score = agreement - clip_penalty * clipped_fraction``, in [-clip_penalty, 1]. numpy only,
``differentiable = False``: use it as the LRM's expert.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import torch

from .base import RewardModel

#: Colour word -> reference RGB in [0, 1].
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.1, 0.1), "green": (0.1, 0.65, 0.15), "blue": (0.1, 0.2, 0.85),
    "yellow": (0.95, 0.85, 0.1), "orange": (1.0, 0.55, 0.0), "purple": (0.5, 0.15, 0.6),
    "pink": (1.0, 0.6, 0.75), "brown": (0.5, 0.3, 0.1), "black": (0.0, 0.0, 0.0),
    "white": (1.0, 1.0, 1.0), "gray": (0.5, 0.5, 0.5), "grey": (0.5, 0.5, 0.5),
}

_WORD = re.compile(r"[a-z]+")


def prompt_colours(prompt: str) -> list[str]:
    """The palette colours named in ``prompt``, in order, without repeats (grey counts as gray)."""
    names = [w if w != "grey" else "gray" for w in _WORD.findall(prompt.lower()) if w in PALETTE]
    return list(dict.fromkeys(names))


def colour_fraction(image: np.ndarray, colour: tuple[float, float, float],
                    tolerance: float) -> float:
    """Fraction of the pixels of a CHW [0, 1] image within ``tolerance`` of ``colour``."""
    distance = np.linalg.norm(image - np.asarray(colour, dtype=image.dtype)[:, None, None], axis=0)
    return float((distance <= tolerance).mean())


def clipped_fraction(image: np.ndarray) -> float:
    """Fraction of channel values at 0 or 1 (within half an 8-bit step)."""
    eps = 0.5 / 255
    return float(((image <= eps) | (image >= 1 - eps)).mean())


class RuleJudge(RewardModel):
    """Rule-based judge: prompt-colour agreement minus a clipping penalty (numpy; not differentiable)."""

    name = "rule-judge"
    input_space = "pixels"
    differentiable = False
    logit_scale = None

    def __init__(self, tolerance: float = 0.35, clip_penalty: float = 0.5) -> None:
        """``tolerance``: RGB distance counted as "that colour"; ``clip_penalty``: weight of clipping."""
        self.tolerance = float(tolerance)
        self.clip_penalty = float(clip_penalty)

    def judge(self, image: np.ndarray, prompt: str) -> float:
        """The score of one CHW [0, 1] image against its prompt."""
        colours = prompt_colours(prompt)
        agreement = (float(np.mean([colour_fraction(image, PALETTE[c], self.tolerance)
                                    for c in colours])) if colours else 0.0)
        return agreement - self.clip_penalty * clipped_fraction(image)

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """One judgement per image, shape ``[B]``."""
        array = images.detach().float().clamp(0, 1).cpu().numpy()
        scores = [self.judge(image, prompt) for image, prompt in zip(array, prompts)]
        return torch.tensor(scores, dtype=torch.float32, device=images.device)
