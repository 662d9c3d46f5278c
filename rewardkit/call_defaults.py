"""Pipeline-call settings a model was trained with, saved beside its diffusers pipeline folder.

A diffusers pipeline folder records its parts, not how to call it. For SD 3 / 3.5 one call
argument changes what the transformer sees: ``max_sequence_length``, the number of T5 tokens per
prompt (zeros when T5 is left out). A model trained with another value than diffusers' default
(256; the world's flow teacher and its students use 1) is silently off its training distribution
when sampled with the default. ``sampling.json`` in the folder holds such values::

    {"max_sequence_length": 1}

The SD3 backbone writes it with a student it saves and reads it as its default; rewardkit's
samplers (``rewardkit sample``, ``eval``, ``demo``) pass its values to the pipeline call, for a
local folder and for a hub id alike. Plain diffusers ignores the file: pass the same values
yourself (``pipe(..., max_sequence_length=1)``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from .errors import ConfigError

logger = logging.getLogger(__name__)

#: The file, inside a pipeline folder.
CALL_DEFAULTS_FILE = "sampling.json"

#: The pipeline-call arguments the file may hold, each a positive integer.
KNOWN_KEYS = ("max_sequence_length",)

#: ``StableDiffusion3Pipeline``'s default ``max_sequence_length`` (a folder records another).
DIFFUSERS_MAX_SEQUENCE_LENGTH = 256


def read_call_defaults(folder: str | Path) -> dict[str, Any]:
    """The call settings saved in ``folder`` (``{}`` for a hub id, or a folder without the file).

    A file that is not a JSON object of known keys with positive integer values raises
    :class:`~rewardkit.errors.ConfigError` naming it."""
    path = Path(os.path.expanduser(str(folder))) / CALL_DEFAULTS_FILE
    if not path.is_file():
        return {}
    return _checked(path)


def hub_call_defaults(repo_id: str) -> dict[str, Any]:
    """The call settings a model on the Hugging Face Hub saved: its ``sampling.json``, fetched
    through the hub cache (diffusers' ``from_pretrained`` does not fetch it). ``{}`` when the
    model has none; also ``{}``, with a warning, when the hub cannot say (offline and not
    cached): the pipeline then samples with diffusers' defaults."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError

    try:
        path = hf_hub_download(repo_id, CALL_DEFAULTS_FILE)
    except LocalEntryNotFoundError:
        logger.warning("could not fetch %s of '%s' (offline and not cached); sampling with "
                       "diffusers' call defaults", CALL_DEFAULTS_FILE, repo_id)
        return {}
    except EntryNotFoundError:
        return {}
    return _checked(Path(path))


def _checked(path: Path) -> dict[str, Any]:
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is not readable JSON ({exc}); restore it or delete it "
                          "(the pipeline then samples with diffusers' defaults)") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a JSON object such as "
                          '{"max_sequence_length": 1}; restore it or delete it')
    for key, value in values.items():
        if key not in KNOWN_KEYS:
            raise ConfigError(f"{path}: unknown key '{key}' (known: {', '.join(KNOWN_KEYS)}); "
                              "remove it")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{path}: '{key}' must be a positive integer, got {value!r}")
    return values


def write_call_defaults(folder: str | Path, values: dict[str, Any]) -> None:
    """Write ``values`` as ``folder``'s call settings (nothing when ``values`` is empty)."""
    if not values:
        return
    unknown = set(values) - set(KNOWN_KEYS)
    if unknown:
        raise ValueError(f"unknown pipeline-call settings: {sorted(unknown)}")
    path = Path(folder) / CALL_DEFAULTS_FILE
    path.write_text(json.dumps(values, indent=2) + "\n")


__all__ = ["CALL_DEFAULTS_FILE", "DIFFUSERS_MAX_SEQUENCE_LENGTH", "KNOWN_KEYS", "hub_call_defaults",
           "read_call_defaults", "write_call_defaults"]
