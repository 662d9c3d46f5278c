"""Built-in world plugin: the embedded world's judges as reward models, and `rewardkit world`."""

from __future__ import annotations

from ..hookspecs import hookimpl
from .rewards import WorldJudge, WorldProxy


@hookimpl
def register_reward_models(register):
    register(WorldJudge)
    register(WorldProxy)
