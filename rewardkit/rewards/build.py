"""Building the expert reward model a training recipe names, one way for every recipe."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from ..errors import ConfigError
from .base import RewardModel

#: The expert's dtype under each mixed precision (for an RM that takes a ``dtype`` when the
#: recipe's ``reward_params`` set none).
REWARD_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def build_expert(name: str, params: Mapping[str, Any], *, device: torch.device,
                 mixed_precision: str = "no", given: Any = None) -> RewardModel:
    """The RM ``given`` (already built) or the registered RM ``name`` built with ``params``,
    moved to ``device`` once. An RM that takes a ``dtype`` runs in the ``mixed_precision`` dtype
    unless ``params`` sets one (a ViT-H/14 RM in fp32 costs several times its bf16 time on a
    GPU)."""
    from ..plugins import get_host

    rm = given
    if rm is None:
        spec = get_host().get("reward", name)
        params = dict(params)
        if (mixed_precision in REWARD_DTYPES and "dtype" not in params
                and "dtype" in {p.name for p in spec.params}):
            params["dtype"] = REWARD_DTYPES[mixed_precision]
        rm = spec.build(**params)
    if not isinstance(rm, RewardModel):
        raise ConfigError(f"reward '{name}' built a {type(rm).__name__}, not a "
                          "rewardkit.rewards.RewardModel")
    rm.to(device)
    return rm


def not_differentiable(name: str) -> str:
    """The refusal of a non-differentiable reward model optimised directly."""
    return (f"reward model '{name}' is not differentiable, so it cannot be optimised directly "
            f"(proxy=none); use proxy=lrm to learn from it through the latent proxy RM")


def follow_directly(rm: RewardModel, name: str, backbone: Any, *,
                    vae_gradient_checkpointing: bool = False) -> None:
    """Ready ``rm`` to be optimised directly (its own gradient, through the VAE decode): refuse
    one that is not differentiable; with ``vae_gradient_checkpointing`` the backbone's VAE
    recomputes its decoder activations in backward (same loss and gradient, less memory)."""
    if not getattr(rm, "differentiable", False):
        raise ConfigError(not_differentiable(name))
    if vae_gradient_checkpointing:
        backbone.vae.enable_gradient_checkpointing()


__all__ = ["REWARD_DTYPES", "build_expert", "follow_directly", "not_differentiable"]
