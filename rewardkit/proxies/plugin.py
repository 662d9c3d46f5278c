"""Built-in proxies plugin: registers rewardkit's own proxies through the public hooks."""

from __future__ import annotations

from ..hookspecs import hookimpl


@hookimpl
def register_proxy_models(register):
    """The latent proxy RM (``lrm``) and its diffusion-native variant (``lrm-unet``)."""
    from .lrm import LatentRewardModel
    from .unet_lrm import UNetLatentRewardModel

    register(LatentRewardModel)
    register(UNetLatentRewardModel)
