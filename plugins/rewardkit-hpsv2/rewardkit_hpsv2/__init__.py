"""rewardkit-hpsv2: the HPSv2 / HPSv2.1 human-preference score as a rewardkit reward model.

Registers the reward model ``hpsv2`` through the ``rewardkit`` entry point group. The model is
OpenCLIP's ViT-H-14 with the HPS checkpoint loaded into it (see the README for why open_clip and
not the ``hpsv2`` wheel). Heavy imports (open_clip, torchvision) happen when the model is built,
so ``rewardkit list reward`` stays fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["HPSv2Reward", "HPSv2Config", "__version__"]


def __getattr__(name: str):
    """Import the reward class on first use (keeps plugin discovery cheap)."""
    if name in ("HPSv2Reward", "HPSv2Config"):
        from . import reward

        return getattr(reward, name)
    raise AttributeError(f"module 'rewardkit_hpsv2' has no attribute '{name}'")
