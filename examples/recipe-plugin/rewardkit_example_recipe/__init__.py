"""Example rewardkit plugin: one training recipe, ``rwr``.

``rwr`` is reward-weighted regression of a model on its own samples: the model draws one-step
samples, any reward model scores them, and the model regresses onto its own samples weighted by
the softmax of their rewards. The reward needs no gradient, so a non-differentiable RM works.
"""

from .rwr import RWRConfig, RWRRecipe

__version__ = "0.1.0"
__all__ = ["RWRConfig", "RWRRecipe"]
