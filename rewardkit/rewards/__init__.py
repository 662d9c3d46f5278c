"""Reward models: pixels (or latents) and prompts in, one score per image out."""

from .base import RewardModel

__all__ = ["RewardModel"]
