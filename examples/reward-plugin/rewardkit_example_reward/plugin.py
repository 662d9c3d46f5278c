"""The plugin module named by the ``rewardkit`` entry point: one hook, two reward models."""

from __future__ import annotations

from rewardkit import hookimpl

from .colorfulness import Colorfulness
from .sharpness import Sharpness


@hookimpl
def register_reward_models(register):
    """Register ``colorfulness`` and ``sharpness`` (names come from the classes' ``name``)."""
    register(Colorfulness)
    register(Sharpness)
