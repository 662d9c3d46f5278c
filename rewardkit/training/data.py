"""The training data of a recipe: one function from a data spec to a resumable loader.

A spec is anything :func:`rewardkit.data.build_loader` reads (webdataset shards, brace ranges,
``pipe:`` and URL specs, an image+caption folder, a folder of pre-encoded latents) or a world
spec (``"world:train"``, ``"world:validation?size=64"``: the embedded world, rendered on the
fly at the training resolution). :func:`check_data_spec` rejects a bad spec before any model
loads, naming the config key; :func:`build_training_loader` builds this rank's loader (the same
code path as the ``lcd`` recipe's).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError

#: Marks of specs that are not plain local paths (and so cannot be checked for existence).
REMOTE_MARKS = ("{", "::", "*", "pipe:", "://")


def check_data_spec(key: str, spec: str) -> None:
    """Raise :class:`ConfigError` naming ``key`` if ``spec`` is empty, a bad world spec, or a
    local path that does not exist."""
    if not spec:
        raise ConfigError(f"{key} is required")
    if spec.startswith("world:"):
        from ..world.source import world_source_from_spec

        world_source_from_spec(spec)  # a bad spec fails here, naming it
        return
    if (not any(mark in spec for mark in REMOTE_MARKS)
            and not Path(os.path.expanduser(spec)).exists()):
        raise ConfigError(f"{key}: '{spec}' does not exist (expected shards, a brace range like "
                          "data-{000..009}.tar, a pipe: or URL spec, a folder, or world:train)")


def resolve_source(spec: Any, resolution: int) -> Any:
    """A world spec as its :class:`~rewardkit.world.source.WorldSource`; anything else as is."""
    from ..world.source import world_source_from_spec

    return world_source_from_spec(spec, side=resolution) or spec


def build_training_loader(spec: Any, *, resolution: int, batch_size: int, seed: int,
                          rank: int = 0, world_size: int = 1, center_crop: bool = False,
                          random_flip: bool = False, num_workers: int = 0,
                          vae_scaling_factor: float | None = None) -> Any:
    """This rank's infinite, resumable loader of ``spec`` (see the module docstring)."""
    from ..data import build_loader

    return build_loader(resolve_source(spec, resolution), resolution=resolution,
                        batch_size=batch_size, seed=seed, rank=rank, world_size=world_size,
                        center_crop=center_crop, random_flip=random_flip,
                        num_workers=num_workers, vae_scaling_factor=vae_scaling_factor)


__all__ = ["build_training_loader", "check_data_spec", "resolve_source"]
