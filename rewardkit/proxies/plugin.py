"""Built-in proxies plugin: registers rewardkit's own proxies through the public hooks."""

from __future__ import annotations

from ..hookspecs import hookimpl


@hookimpl
def register_proxy_models(register):
    """The latent proxy RM (``lrm``) and its diffusion-native variants for UNet (``lrm-unet``)
    and MMDiT (``lrm-dit``) teachers."""
    from .dit_lrm import DiTLatentRewardModel
    from .lrm import LatentRewardModel
    from .unet_lrm import UNetLatentRewardModel

    register(LatentRewardModel)
    register(UNetLatentRewardModel)
    register(DiTLatentRewardModel)
