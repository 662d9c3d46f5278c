"""Checks and choices shared by the training recipes' configs, run before any model loads.

The configs themselves live with their recipes (``rewardkit.recipes.lcd_config.LCDConfig``,
``rg-lcd``'s and ``lrm-pretrain``'s); their fields are declared with
:func:`rewardkit.config.config_field`. Every check raises :class:`rewardkit.errors.ConfigError`
naming the offending key.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError

MIXED_PRECISION = ("no", "fp16", "bf16")
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                 "constant_with_warmup")
REPORT_TO = ("none", "tensorboard", "wandb", "all")

DEFAULT_VALIDATION_PROMPTS = [
    "portrait photo of a girl, photograph, highly detailed face, depth of field, moody light",
    "Self-portrait oil painting, a beautiful cyborg with golden hair, 8k",
    "Astronaut in a jungle, cold color palette, muted colors, detailed, 8k",
    "A photo of beautiful mountain with realistic sunset and blue lake, highly detailed, masterpiece",
]


def looks_like_local_path(value: str) -> bool:
    """True for strings that are clearly filesystem paths rather than hub ids (``org/name``)."""
    return (value.startswith(("/", "./", "../", "~", "\\")) or value in (".", "..")
            or value.count("/") > 1 or "\\" in value or (len(value) > 1 and value[1] == ":"))


def check_teacher_location(teacher: str, key: str = "pretrained_teacher_model") -> None:
    """Raise :class:`ConfigError` naming ``key`` if the teacher is missing, or is a local path
    that does not exist (hub ids are checked when they load)."""
    if not teacher:
        raise ConfigError(f"{key} is required (a hub id or a local folder)")
    path = os.path.expanduser(teacher)
    if looks_like_local_path(path) and not Path(path).exists():
        raise ConfigError(f"{key}: '{teacher}' looks like a local path but does not exist")


def check_resume_keys(resume: str | None, output_dir: str, overwrite: bool) -> None:
    """``resume_from_checkpoint`` is 'latest' or an existing checkpoint folder (a path, or a
    name inside ``output_dir``), and is not combined with ``overwrite_output_dir``."""
    if resume and resume != "latest" and not any(
            p.is_dir() for p in (Path(resume).expanduser(), Path(output_dir) / resume)):
        raise ConfigError(f"resume_from_checkpoint: '{resume}' is neither 'latest' nor a "
                          "checkpoint folder (a path, or a name inside output_dir)")
    if resume and overwrite:
        raise ConfigError("resume_from_checkpoint and overwrite_output_dir contradict each "
                          "other (one continues the run in output_dir, the other removes it); "
                          "pass one of them")


def check_component(key: str, kind: str, name: str, params: dict[str, Any] | None = None,
                    params_key: str | None = None, reserved: dict[str, str] | None = None) -> None:
    """Before anything loads: ``name`` (config key ``key``) is a registered ``kind``, and the
    keys of ``params`` (config key ``params_key``) are parameters it takes; ``reserved`` maps
    parameters the recipe sets itself to the config key to use instead."""
    from ..errors import UnknownComponentError
    from ..plugins import get_host

    try:
        spec = get_host().get(kind, name)
    except UnknownComponentError as error:
        raise ConfigError(f"{key}: {error.args[0]}") from None
    for param in params or {}:
        if reserved and param in reserved:
            raise ConfigError(f"{params_key}: '{param}' is set by the recipe; use "
                              f"--{reserved[param]} instead")
    from ..components import _accepts_var_kwargs

    known = {p.name for p in spec.params}
    if not _accepts_var_kwargs(spec.factory):
        unknown = sorted(set(params or {}) - known - set(reserved or {}))
        if unknown:
            takes = sorted(known - set(reserved or {}))
            raise ConfigError(f"{params_key}: {kind} '{name}' takes no parameter "
                              f"{', '.join(repr(u) for u in unknown)}; "
                              + (f"it takes {', '.join(takes)}" if takes else
                                 "it takes no extra parameters"))


def read_model_config(path: Path) -> dict[str, Any]:
    """A ``config.json`` of a local model folder; ConfigError names a missing or damaged one."""
    if not path.is_file():
        raise ConfigError(f"the teacher has no '{path}'; is it a complete diffusers pipeline "
                          "folder (as save_pretrained writes it)?")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise ConfigError(f"'{path}' is unreadable (truncated or not JSON: {error}); restore "
                          "the teacher's files") from None
    if not isinstance(data, dict):
        raise ConfigError(f"'{path}' is not a JSON object; restore the teacher's files")
    return data


def check_resolution(teacher: str, resolution: int, key: str = "resolution") -> None:
    """For a local teacher folder, before anything loads: ``resolution`` must be a multiple of the
    VAE's downscale factor (else the VAE silently drops the remainder), and large enough that the
    UNet's down blocks still have a latent pixel to halve. Hub ids are checked when they load."""
    path = Path(os.path.expanduser(teacher))
    if not (path / "model_index.json").is_file():
        return
    vae = read_model_config(path / "vae" / "config.json")
    unet = read_model_config(path / "unet" / "config.json")
    factor = 2 ** (len(vae.get("block_out_channels") or [0]) - 1)
    halvings = max(len(unet.get("down_block_types") or [0]) - 1, 0)
    smallest = factor * 2 ** halvings
    if resolution % factor or resolution < smallest:
        fits = max(smallest, round(resolution / factor) * factor)
        raise ConfigError(
            f"{key} {resolution} does not fit the teacher '{teacher}': it must be a multiple of "
            f"{factor} (the VAE's downscale factor) and at least {smallest} (the UNet halves the "
            f"latents {halvings} times); try {key} {fits}")


def _choice(key: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ConfigError(f"{key} must be one of {', '.join(options)}, got {value!r}")
