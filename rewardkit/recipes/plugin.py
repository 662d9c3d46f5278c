"""Built-in recipes plugin: registers rewardkit's own recipes through the public hooks."""

from __future__ import annotations

from ..hookspecs import hookimpl


@hookimpl
def register_recipes(register):
    """``lcd``: plain latent consistency distillation; ``rg-lcd``: reward guided LCD;
    ``lrm-pretrain``: pretraining of rg-lcd's latent proxy RM; ``draft``: reward
    back-propagation through a few-step student's sampling chain; ``grpo``: group-relative
    policy optimisation over its stochastic sampler."""
    from .draft import DraftRecipe
    from .grpo import GRPORecipe
    from .lcd import LCDRecipe
    from .lrm_pretrain import LRMPretrainRecipe
    from .rg_lcd import RGLCDRecipe

    register(LCDRecipe)
    register(RGLCDRecipe)
    register(LRMPretrainRecipe)
    register(DraftRecipe)
    register(GRPORecipe)
