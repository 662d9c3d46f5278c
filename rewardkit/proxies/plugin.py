"""Built-in proxies plugin: registers rewardkit's own proxies through the public hooks."""

from __future__ import annotations

from ..hookspecs import hookimpl


@hookimpl
def register_proxy_models(register):
    """The latent proxy RM (``lrm``)."""
    from .lrm import LatentRewardModel

    register(LatentRewardModel)
