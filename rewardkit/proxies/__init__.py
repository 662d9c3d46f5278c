"""Proxy reward models: latent-space RMs trained online from an expert RM (the paper's LRM)."""

from .base import ProxyRewardModel

__all__ = ["ProxyRewardModel"]
