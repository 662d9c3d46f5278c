"""Reward models: pixels (or latents) and prompts in, one score per image out.

Built in: ``clip-score`` (:class:`CLIPScore`), ``pickscore`` (:class:`PickScore`), ``aesthetic``
(:class:`AestheticScore`), ``weighted`` (:class:`WeightedReward`), and the non-differentiable
``jpeg-compressibility`` (:class:`JpegCompressibility`) and ``rule-judge`` (:class:`RuleJudge`),
and ``remote`` (:class:`RemoteReward`, an RM served by ``rewardkit serve-reward``).
Build them by name with ``rewardkit.reward_model(name, **params)``. :class:`PromptCache` keeps a
reward model's prompt embeddings (or tokens) per distinct prompt, for plugins as for the built-ins.
"""

from .aesthetic import AestheticScore
from .base import RewardModel
from .build import build_expert
from .clip_score import CLIPScore
from .jpeg_compressibility import JpegCompressibility
from .module_reward import ModuleRewardModel
from .pickscore import PickScore
from .prompt_cache import PromptCache
from .remote import RemoteReward
from .rule_judge import RuleJudge
from .weighted import WeightedReward

__all__ = ["RewardModel", "build_expert", "ModuleRewardModel", "CLIPScore", "PickScore", "AestheticScore", "WeightedReward",
           "JpegCompressibility", "RuleJudge", "RemoteReward", "PromptCache"]
