"""Built-in recipes plugin: registers rewardkit's own recipes through the public hooks."""

from __future__ import annotations

from ..hookspecs import hookimpl


@hookimpl
def register_recipes(register):
    """``lcd``: plain latent consistency distillation."""
    from .lcd import LCDRecipe

    register(LCDRecipe)
