"""Built-in rewards plugin: registers rewardkit's own rewards through the public hooks.

Reward models: ``clip-score``, ``pickscore``, ``aesthetic``, ``weighted``,
``jpeg-compressibility`` and ``rule-judge``. Command group: ``rewardkit rewards`` (``score``).
Heavy imports (transformers) happen only when a model is built.
"""

from __future__ import annotations

from ..hookspecs import hookimpl
from .aesthetic import AestheticScore
from .clip_score import CLIPScore
from .jpeg_compressibility import JpegCompressibility
from .pickscore import PickScore
from .rule_judge import RuleJudge
from .weighted import WeightedReward

REWARD_MODELS = (CLIPScore, PickScore, AestheticScore, WeightedReward, JpegCompressibility,
                 RuleJudge)


@hookimpl
def register_reward_models(register):
    """Register the built-in reward models."""
    for factory in REWARD_MODELS:
        register(factory)


@hookimpl
def register_commands(register):
    """Register ``rewardkit rewards``."""
    from .cli import app

    register(app, "rewards", help="Score images with reward models.")
