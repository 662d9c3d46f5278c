"""The rewardkit plugin entry point of rewardkit-imagereward (group ``rewardkit``)."""

from __future__ import annotations

from rewardkit.hookspecs import hookimpl

from .reward import ImageRewardReward


@hookimpl
def register_reward_models(register):
    """Register the ``imagereward`` reward model."""
    register(ImageRewardReward)
