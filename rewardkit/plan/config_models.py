"""The models a config names, as specs read from config files, and their parameter counts
(on the meta device, cached): the teacher's UNet, VAE and text encoder(s), the reward model (and
the dtype ``build_expert`` gives it), the latent proxy RM."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from .modules import ModelSpec, add_lora, on_meta, parameter_count
from .sources import clip_spec, pipeline_specs, vae_spec

#: bitsandbytes keeps 32-bit Adam states for tensors smaller than this (``min_8bit_size``).
BNB_MIN_8BIT_SIZE = 4096


#: Reward models the plan knows, by registered name: the config key of their CLIP model and its
#: default (hpsv2's OpenCLIP ViT-H/14 is the size of the transformers one), or another kind.
KNOWN_REWARDS: dict[str, tuple[str, str | None, str | None]] = {
    "hpsv2": ("clip", None, "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"),
    "pickscore": ("clip", "model", "yuvalkirstain/PickScore_v1"),
    "clip-score": ("clip", "model", "openai/clip-vit-large-patch14"),
    "aesthetic": ("clip", "clip_model", "openai/clip-vit-large-patch14"),
    "imagereward": ("imagereward", None, None),
    "jpeg-compressibility": ("none", None, None),
}

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


#: What the plan covers; anything else is refused by :func:`not_planned` before anything loads.
PLANNED_RECIPES = ("lcd", "rg-lcd")
PLANNED_BACKBONES = ("stable-diffusion", "stable-diffusion-xl")


def not_planned(what: str) -> ConfigError:
    """The one-sentence refusal for ``what`` (``"the 'draft' recipe"``) the plan does not cover."""
    return ConfigError(
        f"the memory plan covers only the {' and '.join(PLANNED_RECIPES)} recipes on the "
        f"{' and '.join(PLANNED_BACKBONES)} backbones, not {what}; to size this run, train it for "
        "a few steps on the GPU (--max_train_steps 5) and read its peak memory in nvidia-smi")


@dataclass
class Models:
    """The specs of a config's models, and the counts the plan needs."""

    teacher: dict[str, ModelSpec]
    vae: ModelSpec
    reward: ModelSpec | None = None
    reward_dtype: torch.dtype = torch.float32
    proxy: ModelSpec | None = None
    proxy_tokens: int = 77


def weight_dtype(mixed_precision: str) -> torch.dtype:
    """The dtype frozen models run in under ``mixed_precision`` (fp32 when off)."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def resolve_models(config: Any, notes: list[str]) -> Models:
    """Read the config's model configs (never weights) into specs."""
    if config.backbone not in PLANNED_BACKBONES:
        raise not_planned(f"the '{config.backbone}' backbone")
    xl = config.backbone == "stable-diffusion-xl"
    teacher = pipeline_specs("pretrained_teacher_model", config.pretrained_teacher_model, xl)
    vae_key = config.pretrained_vae_model_name_or_path or config.backbone_params.get(
        "pretrained_vae_model_name_or_path")
    vae = (vae_spec("pretrained_vae_model_name_or_path", vae_key) if vae_key
           else teacher["vae"])
    models = Models(teacher=teacher, vae=vae)
    if getattr(config, "reward", None):
        models.reward, models.reward_dtype = _reward_spec(config, notes)
    if getattr(config, "proxy", "none") not in (None, "none"):
        models.proxy, models.proxy_tokens = _proxy_spec(config, teacher, xl, notes)
    return models


def _reward_spec(config: Any, notes: list[str]) -> tuple[ModelSpec | None, torch.dtype]:
    from ..recipes.given import is_given

    name, params = config.reward, dict(config.reward_params)
    if is_given(config, "reward"):
        notes.append("reward: passed built; not counted")
        return None, torch.float32
    known = KNOWN_REWARDS.get(name)
    takes_dtype = known is not None
    defaults: dict[str, Any] = {}
    try:
        from ..plugins import get_host

        spec = get_host().get("reward", name)
        defaults = {p.name: p.default for p in spec.params}
        takes_dtype = "dtype" in defaults
    except Exception:  # noqa: BLE001 - a plugin not installed where the plan runs
        if known is None:
            notes.append(f"reward '{name}': not registered here and not known to the plan; "
                         "not counted")
            return None, torch.float32
        notes.append(f"reward '{name}': its plugin is not installed here; planned from its "
                     "known architecture")
    dtype = torch.float32
    if "dtype" in params:
        dtype = _DTYPES.get(str(params["dtype"]), torch.float32)
    elif takes_dtype and config.mixed_precision in ("bf16", "fp16"):
        dtype = weight_dtype(config.mixed_precision)  # build_expert's rule
    kind, key, default = known or ("clip", "model" if "model" in defaults else None, None)
    if kind == "none":
        return None, dtype
    if kind == "imagereward":
        return ModelSpec("imagereward", {"model": "ImageReward-v1.0"}, "imagereward"), dtype
    model = params.get(key) if key else None
    model = model or (defaults.get(key) if key else None) or default
    if not model:
        notes.append(f"reward '{name}': no CLIP model to read the size of; not counted")
        return None, dtype
    return clip_spec(f"reward_params.{key or 'model'}", str(model)), dtype


def _proxy_spec(config: Any, teacher: dict[str, ModelSpec], xl: bool,
                notes: list[str]) -> tuple[ModelSpec | None, int]:
    import json
    import os

    from ..recipes.given import is_given

    tokens = 77 + (1 if xl else 0)  # SDXL's proxy_text adds the pooled embedding as a token
    if is_given(config, "proxy") or config.proxy != "lrm":
        notes.append(f"proxy '{config.proxy}': the plan knows the 'lrm' proxy only; not counted")
        return None, tokens
    text_dim = sum(int(spec.config["hidden_size"]) for part, spec in teacher.items()
                   if part.startswith("text_encoder"))
    values: dict[str, Any] = {"latent_channels": int(teacher["unet"].config.get("in_channels", 4)),
                              "text_dim": text_dim}
    if config.pretrained_proxy:
        path = Path(os.path.expanduser(config.pretrained_proxy)) / "proxy_config.json"
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ConfigError(f"pretrained_proxy: '{path}' cannot be read ({error})") from None
        saved.pop("name", None)
        values = saved
    values.update(config.proxy_params)
    return ModelSpec("lrm", values, "lrm"), tokens


@lru_cache(maxsize=64)
def student_counts(spec: ModelSpec, time_cond_proj_dim: int | None,
            lora: tuple | None) -> tuple[int, int, int]:
    """``(all parameters, trainable parameters, trainable bytes of 8-bit Adam states)`` of a
    UNet student (or any spec, every parameter trainable)."""
    changes = {"time_cond_proj_dim": time_cond_proj_dim} if spec.kind == "unet" else {}
    module = on_meta(spec, **changes)
    if lora is not None:
        add_lora(module, *lora)
    params = list(module.parameters())
    trained = [p.numel() for p in params if p.requires_grad]
    states_8bit = sum(2 * n if n >= BNB_MIN_8BIT_SIZE else 8 * n for n in trained)
    return sum(p.numel() for p in params), sum(trained), states_8bit


@lru_cache(maxsize=16)
def proxy_counts(spec: ModelSpec) -> tuple[int, int]:
    """``(parameters, trainable parameters)`` of a proxy spec."""
    module = on_meta(spec)
    return (sum(p.numel() for p in module.parameters()),
            sum(p.numel() for p in module.trainable_parameters()))


@lru_cache(maxsize=64)
def count_parameters(spec: ModelSpec) -> int:
    """Parameters of ``spec`` (cached)."""
    return parameter_count(spec)


@lru_cache(maxsize=1)
def imagereward_count() -> int:
    """ImageReward's parameters: from its plugin's modules, else the shipped count."""
    try:
        return parameter_count(ModelSpec("imagereward", {}))
    except ImportError:
        from .sources import known_models

        return int(known_models().get("parameter_counts", {}).get("imagereward", 0))


__all__ = ["BNB_MIN_8BIT_SIZE", "KNOWN_REWARDS", "Models", "count_parameters",
           "imagereward_count", "proxy_counts", "resolve_models", "student_counts",
           "weight_dtype"]
