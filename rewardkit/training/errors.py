"""Errors raised while training."""

from __future__ import annotations

from ..errors import RewardkitError


class TrainingError(RewardkitError):
    """Training cannot go on (e.g. a non-finite loss); the message names the step and the term."""
