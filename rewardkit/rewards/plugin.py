"""Built-in rewards plugin: registers rewardkit's own rewards through the public hooks.

Reward models: ``clip-score``, ``pickscore``, ``aesthetic``, ``weighted``,
``jpeg-compressibility``, ``rule-judge`` and ``remote`` (an RM served by another process).
Commands: ``rewardkit rewards`` (``score``) and ``rewardkit serve-reward``. Heavy imports
(transformers; the server's starlette and uvicorn) happen only when a model is built or a
server starts.
"""

from __future__ import annotations

from ..hookspecs import hookimpl
from .aesthetic import AestheticScore
from .clip_score import CLIPScore
from .jpeg_compressibility import JpegCompressibility
from .pickscore import PickScore
from .remote import RemoteReward
from .rule_judge import RuleJudge
from .weighted import WeightedReward

REWARD_MODELS = (CLIPScore, PickScore, AestheticScore, WeightedReward, JpegCompressibility,
                 RuleJudge, RemoteReward)


@hookimpl
def register_reward_models(register):
    """Register the built-in reward models."""
    for factory in REWARD_MODELS:
        register(factory)


@hookimpl
def register_commands(register):
    """Register ``rewardkit rewards`` and ``rewardkit serve-reward``."""
    from ..serving.command import serve_reward_command
    from .cli import app

    register(app, "rewards", help="Score images with reward models.")
    register(serve_reward_command, "serve-reward",
             help="Serve a registered reward model over HTTP (for the `remote` RM).")
