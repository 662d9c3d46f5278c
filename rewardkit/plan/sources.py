"""Where the memory plan reads a run's model configs: ``config.json`` files only, never weights.

In order: a local folder (a diffusers pipeline folder, a VAE folder, a transformers CLIP
folder); the local Hugging Face hub cache (no network: ``try_to_load_from_cache``); the copies of
well-known hub models' configs shipped in ``known_models.json`` (SD 1.5, SD 2.1 and 2.1-base,
SDXL base, the SDXL fp16-fix VAE, CLIP ViT-H/14 and ViT-L/14). Anything else is refused with one
sentence naming the key and the model.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .modules import ModelSpec


@lru_cache(maxsize=1)
def known_models() -> dict[str, Any]:
    """The shipped configs of well-known models (``known_models.json``)."""
    return json.loads(resources.files(__package__).joinpath("known_models.json").read_text())


def _read_json(path: Path, key: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"{key}: '{path}' cannot be read as JSON ({error})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{key}: '{path}' is not a JSON object")
    return data


def _cached(repo: str, filename: str) -> Path | None:
    """``filename`` of hub repo ``repo`` if the local hub cache has it (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - a dependency of diffusers
        return None
    found = try_to_load_from_cache(repo, filename)
    return Path(found) if isinstance(found, str) else None


def _folder(value: str) -> Path | None:
    path = Path(os.path.expanduser(value))
    return path if path.is_dir() else None


def _no_config(key: str, value: str, what: str) -> ConfigError:
    ids = sorted(known_models()["hub_ids"])
    return ConfigError(f"{key}: no config of '{value}' is readable here (not a local folder, not "
                       f"in the local hub cache, and not a {what} the plan knows: "
                       f"{', '.join(ids)}); download its config.json files or pass a local folder")


def pipeline_specs(key: str, value: str, xl: bool) -> dict[str, ModelSpec]:
    """The teacher's UNet, VAE and text encoder(s) of pipeline ``value`` (config key ``key``)."""
    parts = ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if xl else [])
    configs: dict[str, dict[str, Any]] = {}
    folder = _folder(value)
    for part in parts:
        if folder is not None:
            path = folder / part / "config.json"
            if not path.is_file():
                raise ConfigError(f"{key}: '{value}' has no {part}/config.json; is it a complete "
                                  "diffusers pipeline folder?")
        else:
            path = _cached(value, f"{part}/config.json")
        if path is not None:
            configs[part] = _read_json(path, key)
    source = str(folder) if folder is not None else value
    if len(configs) < len(parts):
        name = known_models()["hub_ids"].get(value)
        known = known_models()["pipelines"].get(name or "")
        if known is None or any(part not in known for part in parts):
            raise _no_config(key, value, "pipeline")
        configs, source = {part: known[part] for part in parts}, f"{value} (shipped config)"
    kinds = {"unet": "unet", "vae": "vae", "text_encoder": "clip-text",
             "text_encoder_2": "clip-text-projection"}
    return {part: ModelSpec(kinds[part], configs[part], source) for part in parts}


def vae_spec(key: str, value: str) -> ModelSpec:
    """A separate VAE (``pretrained_vae_model_name_or_path``): a folder, cached or known id."""
    folder = _folder(value)
    path = (folder / "config.json") if folder is not None else _cached(value, "config.json")
    if path is not None and path.is_file():
        return ModelSpec("vae", _read_json(path, key), str(folder or value))
    name = known_models()["hub_ids"].get(value)
    if name not in known_models()["vaes"]:
        raise _no_config(key, value, "VAE")
    return ModelSpec("vae", known_models()["vaes"][name], f"{value} (shipped config)")


def clip_spec(key: str, value: str) -> ModelSpec:
    """A transformers CLIP model (a reward model's ``model``): a folder, cached or known id."""
    folder = _folder(value)
    path = (folder / "config.json") if folder is not None else _cached(value, "config.json")
    if path is not None and path.is_file():
        return ModelSpec("clip", _read_json(path, key), str(folder or value))
    name = known_models()["hub_ids"].get(value)
    if name not in known_models()["clip"]:
        raise _no_config(key, value, "CLIP model")
    return ModelSpec("clip", known_models()["clip"][name], f"{value} (shipped config)")


__all__ = ["clip_spec", "known_models", "pipeline_specs", "vae_spec"]
