"""Building a registered proxy RM for a backbone, new or from a saved one (one code path for
every recipe that trains a proxy)."""

from __future__ import annotations

import os
from typing import Any

from ..errors import ConfigError
from .base import ProxyRewardModel

#: Where a run (and each of its checkpoints) keeps its proxy: ``proxy/``.
PROXY_DIR = "proxy"
#: The ``proxy`` value of recipes that then follow the reward model's own gradient.
NO_PROXY = "none"


def build_proxy(name: str, params: dict[str, Any], backbone: Any,
                pretrained: str | None = None) -> ProxyRewardModel:
    """The proxy ``name``: loaded from ``pretrained`` (a ``save_pretrained`` folder; ``params``
    override non-shape settings) or new, with the values of its factory's ``backbone_params``
    (by default ``latent_channels`` and ``text_dim``) taken from ``backbone`` unless ``params``
    sets them, then :meth:`~ProxyRewardModel.initialise_from_backbone` (a proxy built from the
    teacher copies its weights there)."""
    from ..plugins import get_host

    spec = get_host().get("proxy", name)
    if pretrained:
        load = getattr(spec.factory, "from_pretrained", None)
        if load is None:
            raise ConfigError(f"proxy '{name}' cannot load pretrained_proxy (its factory has "
                              "no from_pretrained)")
        proxy = load(os.path.expanduser(pretrained), **params)
    else:
        known = {p.name for p in spec.params}
        from_backbone = getattr(spec.factory, "backbone_params", ProxyRewardModel.backbone_params)
        given = {k: v for k, v in from_backbone(backbone).items() if k in known}
        proxy = spec.build(**{**given, **params})
    if not isinstance(proxy, ProxyRewardModel):
        raise ConfigError(f"proxy '{name}' built a {type(proxy).__name__}, not a "
                          "rewardkit.proxies.ProxyRewardModel")
    if not pretrained:
        proxy.initialise_from_backbone(backbone)
    return proxy
