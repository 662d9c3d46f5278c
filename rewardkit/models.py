"""Helpers about pretrained models that every component kind shares: naming a dtype, telling a
Hugging Face Hub id from a local folder, checking a local pipeline or VAE folder before anything
loads, the dtype keyword the installed transformers and diffusers expect, and the bare module
inside a DDP or ``torch.compile`` wrapper.

Why a module of their own, and why this name: reward models, sampling, the recipes and the
backbones all need them, so they cannot live in any one of those (a reward model importing a
backbone to read a dtype name would make the backbones a utility drawer). They are all about
models rather than about one step such as loading (:func:`unwrap_model` serves saving), hence
``rewardkit.models``. It depends only on :mod:`rewardkit.errors`; transformers and diffusers are
imported inside the functions that need them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .errors import ConfigError

#: Folders every Stable Diffusion pipeline folder has (SD 1.x/2.x; SDXL adds its second text
#: encoder and tokenizer).
PIPELINE_PARTS: tuple[str, ...] = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
           "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def resolve_dtype(dtype: str | torch.dtype, key: str = "dtype") -> torch.dtype:
    """``"float32"``/``"fp16"``/``"bf16"``/... or a ``torch.dtype`` -> ``torch.dtype``."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ConfigError(f"{key}: unknown dtype {dtype!r}; use one of "
                          f"{', '.join(sorted(_DTYPES))}") from None


def looks_like_hub_id(name: str) -> bool:
    """True for ``owner/name`` strings that the Hugging Face Hub could resolve."""
    return bool(_HUB_ID.match(name)) and not name.startswith((".", "~"))


def check_pipeline_location(path_or_id: str, key: str = "pretrained_model_name_or_path",
                            parts: Sequence[str] = PIPELINE_PARTS) -> None:
    """Fail early (before any loading) on a local pipeline folder that is missing or incomplete.

    Hub ids pass through untouched; ``from_pretrained`` resolves them (and their cache).
    """
    path = Path(os.path.expanduser(str(path_or_id)))
    if path.is_dir():
        missing = [part for part in parts if not (path / part).is_dir()]
        if missing:
            raise ConfigError(f"{key}: '{path_or_id}' is not a complete pipeline folder for this "
                              f"backbone (missing {', '.join(missing)})")
        return
    if path.exists():
        raise ConfigError(f"{key}: '{path_or_id}' is a file, not a pipeline folder")
    if not looks_like_hub_id(str(path_or_id)):
        raise ConfigError(f"{key}: '{path_or_id}' does not exist (and is not a Hugging Face Hub "
                          "id like 'stabilityai/stable-diffusion-2-1')")


def check_vae_location(path_or_id: str, key: str = "pretrained_vae_model_name_or_path") -> None:
    """Fail early on a local VAE folder that is missing or has no ``config.json``."""
    path = Path(os.path.expanduser(str(path_or_id)))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"{key}: '{path_or_id}' has no config.json; pass an AutoencoderKL "
                              "folder (as save_pretrained writes it) or a hub id")
        return
    if path.exists() or not looks_like_hub_id(str(path_or_id)):
        raise ConfigError(f"{key}: '{path_or_id}' is neither an AutoencoderKL folder nor a "
                          "Hugging Face Hub id like 'madebyollin/sdxl-vae-fp16-fix'")


def transformers_dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """transformers' ``from_pretrained`` dtype keyword for the installed version (``dtype`` from
    4.56 on, ``torch_dtype`` before)."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def pipeline_dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """``DiffusionPipeline.from_pretrained``'s dtype keyword for the installed diffusers.

    diffusers renamed it from ``torch_dtype`` to ``dtype`` in 2026 (huggingface/diffusers#14205)
    and warns on the old name; older releases know only ``torch_dtype``. There is no version
    number to compare against that we could verify offline, so the new name is used where the
    helper that resolves it exists.
    """
    from diffusers.utils import deprecation_utils

    return {"dtype": dtype} if hasattr(deprecation_utils, "_resolve_dtype") else {"torch_dtype": dtype}


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare module inside DDP/DataParallel (``.module``) and ``torch.compile`` (``._orig_mod``)."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


__all__ = ["PIPELINE_PARTS", "resolve_dtype", "looks_like_hub_id", "check_pipeline_location",
           "check_vae_location", "transformers_dtype_kwarg", "pipeline_dtype_kwarg", "unwrap_model"]
