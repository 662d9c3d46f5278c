"""Built-in recipes plugin: registers rewardkit's own recipes through the public hooks."""

from __future__ import annotations

from ..hookspecs import hookimpl


@hookimpl
def register_recipes(register):
    """``lcd``: plain latent consistency distillation; ``rg-lcd``: reward guided LCD."""
    from .lcd import LCDRecipe
    from .rg_lcd import RGLCDRecipe

    register(LCDRecipe)
    register(RGLCDRecipe)
