"""The statistics of a vote report: win rates with bootstrap intervals, rater agreement, and
how well a reward model predicts the raters.

- **Win rate** of model ``a`` over ``b``: a vote for ``a`` counts 1, for ``b`` 0, a tie 0.5 (half
  a win for each side); skips are left out. The 95% interval is a percentile bootstrap that
  resamples *pairs* (with all their votes), not single votes, since the votes of several raters
  on one pair are not independent; with one vote per pair it is the ordinary bootstrap.
- **Rater agreement**: over the pairs that more than one rater answered (a criterion at a time),
  the fraction of rater pairs giving the same answer (``a``, ``b`` or tie).
- **RM agreement**: over the votes that chose a side, the fraction where a reward model scores
  the chosen image higher (an RM tie counts half), with the same pair bootstrap.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError

RESAMPLES = 2000
CONFIDENCE = 0.95
#: What a counted vote is worth to model ``a``.
OUTCOME = {"a": 1.0, "b": 0.0, "tie": 0.5}


def cluster_bootstrap(values: Sequence[float], clusters: Sequence[Any], *,
                      resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                      seed: int = 0) -> dict[str, float]:
    """Mean of ``values`` with a percentile bootstrap interval resampling whole ``clusters``.

    Returns ``{"mean", "ci_low", "ci_high", "n", "clusters"}``; a seeded generator makes the
    interval reproducible.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0 or len(values) != len(clusters):
        raise ConfigError(f"a bootstrap needs one cluster per value and at least one value; got "
                          f"{len(values)} values and {len(clusters)} clusters")
    _, index = np.unique(np.asarray([str(c) for c in clusters]), return_inverse=True)
    sums = np.bincount(index, weights=values)
    counts = np.bincount(index).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(sums), size=(resamples, len(sums)))
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    tail = (1.0 - confidence) / 2
    return {"mean": float(values.mean()), "ci_low": float(np.quantile(means, tail)),
            "ci_high": float(np.quantile(means, 1 - tail)), "n": int(len(values)),
            "clusters": int(len(sums))}


def counted(votes: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The votes that count (skips left out)."""
    return [v for v in votes if v["winner"] in OUTCOME]


def win_rate(votes: Sequence[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """Win rate of model ``a`` over ``b`` in ``votes`` (ties half, skips out) with its pair
    bootstrap interval, and the counts: ``{"win_rate", "ci_low", "ci_high", "votes",
    "pairs", "a", "b", "tie", "raters"}``; ``None`` values when no vote counts."""
    kept = counted(votes)
    tally = {side: sum(v["winner"] == side for v in kept) for side in ("a", "b", "tie")}
    base = {**tally, "votes": len(kept), "raters": len({v["rater"] for v in kept})}
    if not kept:
        return {"win_rate": None, "ci_low": None, "ci_high": None, "pairs": 0, **base}
    result = cluster_bootstrap([OUTCOME[v["winner"]] for v in kept],
                               [(v["study"], v["pair"]) for v in kept], seed=seed)
    return {"win_rate": result["mean"], "ci_low": result["ci_low"],
            "ci_high": result["ci_high"], "pairs": result["clusters"], **base}


def latest_per_rater(votes: Sequence[dict[str, Any]]) -> dict[tuple[Any, ...], dict[str, str]]:
    """``{(study, pair, criterion): {rater: winner}}`` of the counted votes (a rater's last
    vote on a pair wins, should a file hold two)."""
    table: dict[tuple[Any, ...], dict[str, str]] = {}
    for vote in counted(votes):
        table.setdefault((vote["study"], vote["pair"], vote["criterion"]), {})[vote["rater"]] = \
            vote["winner"]
    return table


def rater_agreement(votes: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How often two raters answering the same pair (and criterion) give the same answer:
    ``{"agreement", "pairs", "rater_pairs"}`` (``agreement`` is ``None`` with no shared pair)."""
    agree = total = shared = 0
    for answers in latest_per_rater(votes).values():
        if len(answers) < 2:
            continue
        shared += 1
        for first, second in combinations(answers.values(), 2):
            total += 1
            agree += first == second
    return {"agreement": agree / total if total else None, "pairs": shared, "rater_pairs": total}


def left_rate(votes: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Fraction of side-choosing votes that chose the left image (0.5: no position bias)."""
    sided = [v for v in votes if v["choice"] in ("left", "right")]
    if not sided:
        return {"left_rate": None, "votes": 0}
    return {"left_rate": sum(v["choice"] == "left" for v in sided) / len(sided),
            "votes": len(sided)}


def rm_agreement(votes: Sequence[dict[str, Any]], score_a: Sequence[float],
                 score_b: Sequence[float], seed: int = 0) -> dict[str, Any]:
    """How often a reward model's scores of each vote's two images (``score_a[i]``,
    ``score_b[i]`` for ``votes[i]``) prefer the image the rater chose; ties of the rater are
    left out, an RM tie counts half. ``{"agreement", "ci_low", "ci_high", "votes"}``."""
    if not len(votes) == len(score_a) == len(score_b):
        raise ConfigError(f"RM agreement needs two scores per vote; got {len(votes)} votes, "
                          f"{len(score_a)} and {len(score_b)} scores")
    hits, clusters = [], []
    for vote, a, b in zip(votes, score_a, score_b):
        if vote["winner"] not in ("a", "b"):
            continue
        if a == b:
            hits.append(0.5)
        else:
            hits.append(float((a > b) == (vote["winner"] == "a")))
        clusters.append((vote["study"], vote["pair"]))
    if not hits:
        return {"agreement": None, "ci_low": None, "ci_high": None, "votes": 0}
    result = cluster_bootstrap(hits, clusters, seed=seed)
    return {"agreement": result["mean"], "ci_low": result["ci_low"],
            "ci_high": result["ci_high"], "votes": result["n"]}


__all__ = ["CONFIDENCE", "OUTCOME", "RESAMPLES", "cluster_bootstrap", "counted",
           "latest_per_rater", "left_rate", "rater_agreement", "rm_agreement", "win_rate"]
