"""rewardkit-imagereward: ImageReward-v1.0 as a rewardkit reward model (``imagereward``).

ImageReward (BLIP ViT-L + a cross-attending BERT + an MLP head) is re-implemented here in plain
torch with the published checkpoint's parameter names, so it runs with transformers 5 and needs
neither the ``image-reward`` package nor ``clip``, ``fairscale``, ``timm`` or ``pkg_resources``.
See the README for the reasons and for the parameters.
"""

from __future__ import annotations

from .model import ImageRewardModel
from .reward import ImageRewardConfig, ImageRewardReward

__version__ = "0.1.0"

__all__ = ["ImageRewardConfig", "ImageRewardModel", "ImageRewardReward", "__version__"]
