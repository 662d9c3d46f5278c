"""Data specs: one function from a spec to a resumable loader, and the checks a config runs.

A spec is anything :func:`rewardkit.data.build_loader` reads (webdataset shards, brace ranges,
``pipe:`` and URL specs, an image+caption folder, a folder of pre-encoded latents) or
``SCHEME:...`` of a data source a plugin registered (the embedded world's ``"world:train"``,
``"world:validation?size=64"``, rendered on the fly at the training resolution).
:func:`check_data_spec` rejects a bad spec before any model loads, naming the config key;
:func:`build_training_loader` builds this rank's loader. The training recipes, the evaluation's
reference images and the LRM's preference sets all read their data through it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ..errors import ConfigError

#: Marks of specs that are not plain local paths (and so cannot be checked for existence).
REMOTE_MARKS = ("{", "::", "*", "pipe:", "://")
#: ``SCHEME:...`` of a data source registered through the ``register_data_sources`` hook (two
#: letters at least, so a Windows drive ``C:`` is a path).
SCHEME = re.compile(r"^([a-z][a-z0-9_-]+):(?!//)")


def registered_source(spec: Any) -> Any | None:
    """The data-source factory registered for ``spec``'s scheme (``world`` for ``world:train``),
    or None when ``spec`` names no registered scheme (a path, shards, ``pipe:``, a URL)."""
    if not isinstance(spec, str) or not SCHEME.match(spec):
        return None
    from ..errors import UnknownComponentError
    from ..plugins import get_host

    try:
        return get_host().get("data", spec.split(":", 1)[0]).factory
    except UnknownComponentError:
        return None


def check_data_spec(key: str, spec: str) -> None:
    """Raise :class:`ConfigError` naming ``key`` if ``spec`` is empty, a bad spec of a registered
    data source, or a local path that does not exist."""
    if not spec:
        raise ConfigError(f"{key} is required")
    source = registered_source(spec)
    if source is not None:
        try:
            source.from_spec(spec)  # a bad spec fails here, naming it
        except ConfigError as error:
            message = str(error)
            default_key = "train_shards_path_or_url: "  # what a source names when it knows no key
            if key != default_key[:-2] and message.startswith(default_key):
                message = message[len(default_key):]
            raise ConfigError(message if message.startswith(key) else f"{key}: {message}") from None
        return
    if (not any(mark in spec for mark in REMOTE_MARKS)
            and not Path(os.path.expanduser(spec)).exists()):
        scheme = SCHEME.match(spec)
        hint = (f"; no data source is registered as '{scheme.group(1)}' (see `rewardkit list "
                "data`)" if scheme else "")
        raise ConfigError(f"{key}: '{spec}' does not exist (expected shards, a brace range like "
                          "data-{000..009}.tar, a pipe: or URL spec, a folder, or SCHEME:... of a "
                          f"registered data source){hint}")


def resolve_source(spec: Any, resolution: int) -> Any:
    """A spec of a registered data source as its source (at ``resolution``); anything else as is."""
    source = registered_source(spec)
    return source.from_spec(spec, resolution=resolution) if source is not None else spec


def build_training_loader(spec: Any, *, resolution: int, batch_size: int, seed: int,
                          rank: int = 0, world_size: int = 1, center_crop: bool = False,
                          random_flip: bool = False, num_workers: int = 0,
                          vae_scaling_factor: float | None = None) -> Any:
    """This rank's infinite, resumable loader of ``spec`` (see the module docstring)."""
    from .loader import build_loader

    return build_loader(resolve_source(spec, resolution), resolution=resolution,
                        batch_size=batch_size, seed=seed, rank=rank, world_size=world_size,
                        center_crop=center_crop, random_flip=random_flip,
                        num_workers=num_workers, vae_scaling_factor=vae_scaling_factor)


__all__ = ["build_training_loader", "check_data_spec", "registered_source", "resolve_source"]
