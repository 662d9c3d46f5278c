"""Preference sets built from a data source and cached on disk (for ``lrm-pretrain``).

:func:`first_samples` reads the first ``count`` samples of a data spec (deterministically:
centre crops, no flips, a seeded VAE sample) as scaled latents and captions;
:func:`ensure_preference_set` builds a :class:`~rewardkit.proxies.preference_set.PreferenceSet`
into a folder unless one built from the same inputs (its ``identity``) is already there, so a
resumed run reuses the set (and the expert scores it cost) instead of rebuilding it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..errors import ConfigError
from ..files import write_aside
from .preference_set import PreferenceSet

logger = logging.getLogger(__name__)

IDENTITY_KEY = "built_from"


@torch.no_grad()
def first_samples(backbone: Any, spec: Any, count: int, *, resolution: int, seed: int,
                  batch_size: int = 16) -> tuple[torch.Tensor, list[str]]:
    """Scaled latents ``[count, C, h, w]`` (CPU, fp32) and captions of ``spec``'s first samples."""
    from ..data.specs import build_training_loader

    loader = build_training_loader(spec, resolution=resolution, batch_size=min(batch_size, count),
                                   seed=seed, center_crop=True, random_flip=False,
                                   vae_scaling_factor=backbone.vae_scaling_factor)
    generator = torch.Generator().manual_seed(seed)
    latents: list[torch.Tensor] = []
    captions: list[str] = []
    try:
        while len(captions) < count:
            batch = next(loader)
            if "latents" in batch:
                chunk = batch["latents"].float()
            else:
                chunk = backbone.encode_images(batch["pixel_values"].to(backbone.device),
                                               generator=generator).float().cpu()
            latents.append(chunk)
            captions.extend(batch["captions"])
    finally:
        loader.close()
    return torch.cat(latents)[:count], captions[:count]


def expert_on_latents(reward_model: Any, backbone: Any) -> Callable[[torch.Tensor, Sequence[str]],
                                                                     torch.Tensor]:
    """``expert(latents, captions)``: the RM on decoded images (or on latents if it reads them)."""

    @torch.no_grad()
    def expert(latents: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        if getattr(reward_model, "input_space", "pixels") == "latents":
            return reward_model(latents, list(captions))
        return reward_model(backbone.decode_latents(latents).float(), list(captions))

    return expert


def _canonical(identity: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(identity, sort_keys=True, default=str))


def cached_identity(folder: str | Path) -> dict[str, Any] | None:
    """The identity stored with the set in ``folder``; ``None`` if there is no readable set."""
    folder = Path(folder)
    try:
        pset = PreferenceSet.load(folder)
    except ConfigError as error:
        if folder.exists():
            logger.warning("preference set in %s is unusable (%s); rebuilding it", folder, error)
        return None
    return pset.meta.get(IDENTITY_KEY)


def ensure_preference_set(folder: str | Path, identity: dict[str, Any],
                          build: Callable[[], PreferenceSet]) -> bool:
    """Make ``folder`` hold a set built from ``identity``; True if ``build`` had to run.

    The new set is written next to ``folder`` and renamed into place (never half-written).
    """
    folder = Path(folder)
    identity = _canonical(identity)
    if cached_identity(folder) == identity:
        return False
    pset = build()
    pset.meta[IDENTITY_KEY] = identity
    write_aside(folder, pset.save)
    return True


__all__ = ["cached_identity", "ensure_preference_set", "expert_on_latents", "first_samples"]
