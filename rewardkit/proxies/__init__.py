"""Proxy reward models: latent-space RMs trained online from an expert RM (the paper's LRM)."""

from .base import ProxyRewardModel
from .lrm import LatentRewardModel
from .unet_lrm import UNetLatentRewardModel
from .update import ProxyCandidates, ProxyUpdater, sample_candidates

__all__ = ["LatentRewardModel", "ProxyCandidates", "ProxyRewardModel", "ProxyUpdater",
           "UNetLatentRewardModel", "sample_candidates"]
