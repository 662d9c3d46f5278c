"""The rewardkit plugin entry point of rewardkit-hpsv2 (group ``rewardkit``, name ``hpsv2``)."""

from __future__ import annotations

from rewardkit.hookspecs import hookimpl

from .reward import HPSv2Reward


@hookimpl
def register_reward_models(register):
    """Register the ``hpsv2`` reward model."""
    register(HPSv2Reward)
