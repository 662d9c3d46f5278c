"""The plugin module named by the ``rewardkit`` entry point: one hook, one recipe."""

from __future__ import annotations

from rewardkit import hookimpl

from .rwr import RWRRecipe


@hookimpl
def register_recipes(register):
    """Register ``rwr`` (name and description come from the class)."""
    register(RWRRecipe)
