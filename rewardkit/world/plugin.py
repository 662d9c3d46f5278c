"""Built-in world plugin: the embedded world's judges as reward models, its data source
(``world:train``), its evaluation prompts and Frechet distance (``rewardkit eval --prompts world``), its preset (``rewardkit run rg-lcd`` with no arguments), and `rewardkit world`."""

from __future__ import annotations

from ..hookspecs import hookimpl
from .eval_sets import WorldFrechet, WorldPrompts
from .preset import WorldPreset
from .rewards import WorldJudge, WorldScorer
from .source import WorldData


@hookimpl
def register_reward_models(register):
    register(WorldJudge)
    register(WorldScorer)


@hookimpl
def register_data_sources(register):
    register(WorldData)


@hookimpl
def register_prompt_sets(register):
    register(WorldPrompts)


@hookimpl
def register_metrics(register):
    register(WorldFrechet)


@hookimpl
def register_presets(register):
    register(WorldPreset)


@hookimpl
def register_commands(register):
    """``rewardkit world build``: train the world's teacher and judges."""
    from .commands import world_app

    register(world_app, name="world", help="The embedded world: build its teacher and judges.")
