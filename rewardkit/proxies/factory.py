"""Building a registered proxy RM for a backbone, new or from a saved one (one code path for
every recipe that trains a proxy)."""

from __future__ import annotations

import os
from typing import Any

from ..errors import ConfigError
from .base import ProxyRewardModel


def build_proxy(name: str, params: dict[str, Any], backbone: Any,
                pretrained: str | None = None) -> ProxyRewardModel:
    """The proxy ``name``: loaded from ``pretrained`` (a ``save_pretrained`` folder; ``params``
    override non-shape settings) or new, with ``latent_channels``/``text_dim`` taken from
    ``backbone`` unless ``params`` sets them."""
    from ..plugins import get_host

    spec = get_host().get("proxy", name)
    if pretrained:
        load = getattr(spec.factory, "from_pretrained", None)
        if load is None:
            raise ConfigError(f"proxy '{name}' cannot load pretrained_latent_rm (its factory has "
                              "no from_pretrained)")
        proxy = load(os.path.expanduser(pretrained), **params)
    else:
        known = {p.name for p in spec.params}
        sizes = {"latent_channels": backbone.latent_channels, "text_dim": backbone.text_embed_dim}
        proxy = spec.build(**{**{k: v for k, v in sizes.items() if k in known}, **params})
    if not isinstance(proxy, ProxyRewardModel):
        raise ConfigError(f"proxy '{name}' built a {type(proxy).__name__}, not a "
                          "rewardkit.proxies.ProxyRewardModel")
    return proxy
