"""Pairwise win rate with a bootstrap confidence interval: the automatic stand-in for the
paper's human preference study (student vs teacher on the same prompt and seed)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import ConfigError


def win_rate(scores: Sequence[float], baseline: Sequence[float], *, resamples: int = 2000,
             confidence: float = 0.95, seed: int = 0) -> dict[str, float]:
    """How often ``scores[i]`` beats ``baseline[i]`` (a tie counts half), with a percentile
    bootstrap interval over the pairs.

    Returns ``{"win_rate", "ci_low", "ci_high", "pairs"}``. Pairs are resampled with
    replacement ``resamples`` times from a seeded generator, so the interval is reproducible.
    """
    a, b = np.asarray(scores, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ConfigError(f"win rate needs two equal-length score lists, got {a.shape} and {b.shape}")
    outcome = np.where(a > b, 1.0, np.where(a < b, 0.0, 0.5))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(outcome), size=(resamples, len(outcome)))
    means = outcome[draws].mean(axis=1)
    tail = (1.0 - confidence) / 2
    return {"win_rate": float(outcome.mean()), "ci_low": float(np.quantile(means, tail)),
            "ci_high": float(np.quantile(means, 1 - tail)), "pairs": int(len(outcome))}
