"""Evaluation: sample models on a prompt set, score them, compare them (``rewardkit eval``).

>>> from rewardkit.evaluation import Evaluation, ModelSpec, load_prompt_set
>>> evaluation = Evaluation(load_prompt_set("world"), ["world-judge", "world-fd"], "eval-out")
>>> results = evaluation.run([ModelSpec("student", "rg-lcd-world/pipeline")])
"""

from .metrics import FID, KID, DistributionMetric, FeatureModule, frechet_distance
from .prompt_sets import PromptSet, load_prompt_set, read_prompt_set
from .runner import Evaluation, ModelSpec
from .win_rate import win_rate

__all__ = ["DistributionMetric", "Evaluation", "FID", "FeatureModule", "KID", "ModelSpec",
           "PromptSet", "frechet_distance", "load_prompt_set", "read_prompt_set", "win_rate"]
