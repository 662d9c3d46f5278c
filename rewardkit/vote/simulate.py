"""Synthetic raters: a reward model answers a study through the same session a person's page
uses (scheduling, random sides, recording), to try a study, its report and its export before
asking people, or to test them.

A simulated rater sees the reward model's scores ``s_left`` and ``s_right`` of the two images
shown and answers like a Bradley-Terry rater: a tie when ``|s_left - s_right| < tie_margin``,
else left with probability ``sigmoid((s_left - s_right) / temperature)``. Each answer is an
independent draw, so several raters disagree where the scores are close, as people do. Their
rater ids are ``sim-1``, ``sim-2``... so no report mistakes them for people.
"""

from __future__ import annotations

import math
import random
from typing import Any

import torch

from ..errors import ConfigError
from .session import VotingSession

BATCH = 32


@torch.no_grad()
def pair_scores(session: VotingSession, reward_model: Any) -> dict[str, list[float]]:
    """``{"a": [...], "b": [...]}``: the reward model's score of every pair's two images."""
    from .images import load_images

    study = session.study
    scores: dict[str, list[float]] = {}
    for arm in "ab":
        values: list[float] = []
        for start in range(0, study.num_pairs, BATCH):
            indices = range(start, min(start + BATCH, study.num_pairs))
            images = load_images([study.image(arm, i) for i in indices])
            prompts = [study.pair(i).prompt for i in indices]
            values += reward_model(images.to(reward_model.device), prompts).float().cpu().tolist()
        scores[arm] = values
    return scores


def answer(left: float, right: float, temperature: float, tie_margin: float,
           rng: random.Random) -> str:
    """One simulated answer (``left``/``right``/``tie``) to scores ``left`` and ``right``."""
    if abs(left - right) < tie_margin:
        return "tie"
    z = max(-60.0, min(60.0, (left - right) / temperature))
    return "left" if rng.random() < 1.0 / (1.0 + math.exp(-z)) else "right"


def simulate(session: VotingSession, reward_model: Any, raters: int = 3,
             temperature: float = 0.1, tie_margin: float = 0.0, pairs: int | None = None,
             seed: int = 0) -> int:
    """Let ``raters`` simulated raters answer ``pairs`` pairs each (all by default) through
    ``session``; returns the votes written."""
    if raters < 1:
        raise ConfigError(f"--raters must be at least 1, got {raters}")
    if temperature <= 0 or tie_margin < 0:
        raise ConfigError(f"--temperature must be positive and --tie-margin not negative; got "
                          f"{temperature} and {tie_margin}")
    scores = pair_scores(session, reward_model)
    rng = random.Random(seed)
    written = 0
    for number in range(1, raters + 1):
        rater = f"sim-{number}"
        done = 0
        while pairs is None or done < pairs:
            shown = session.next_pair(rater)
            if shown is None:
                break
            index = shown.pair.index
            right = "b" if shown.left == "a" else "a"
            left_score, right_score = scores[shown.left][index], scores[right][index]
            choices = {criterion: answer(left_score, right_score, temperature, tie_margin, rng)
                       for criterion in session.criteria}
            written += len(session.record(shown, choices))
            done += 1
    return written


__all__ = ["answer", "pair_scores", "simulate"]
