"""Recipes: training procedures composing backbones, solvers, reward and proxy models."""

from .base import Recipe, RecipeConfig

__all__ = ["Recipe", "RecipeConfig"]
