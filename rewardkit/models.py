"""Helpers about pretrained models that every component kind shares: naming a dtype, telling a
Hugging Face Hub id from a local folder, checking a local pipeline or VAE folder (and that a
training resolution fits a local teacher) before anything loads, the dtype keyword the installed transformers and diffusers expect, and the bare module
inside a DDP or ``torch.compile`` wrapper.

Why a module of their own, and why this name: reward models, sampling, the recipes and the
backbones all need them, so they cannot live in any one of those (a reward model importing a
backbone to read a dtype name would make the backbones a utility drawer). They are all about
models rather than about one step such as loading (:func:`unwrap_model` serves saving), hence
``rewardkit.models``. It depends only on :mod:`rewardkit.errors`; transformers and diffusers are
imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from .errors import ConfigError, RewardkitError

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


def saved_parts(path_or_id: str) -> tuple[str, ...]:
    """The parts a local pipeline folder's ``model_index.json`` says it saved (not those saved
    as absent, like an SD3 pipeline's dropped T5), or the Stable Diffusion parts when it has no
    readable index (the check then names what is missing)."""
    index = Path(os.path.expanduser(str(path_or_id))) / "model_index.json"
    try:
        entries = json.loads(index.read_text())
    except (OSError, ValueError):
        return PIPELINE_PARTS
    if not isinstance(entries, dict):
        return PIPELINE_PARTS
    return tuple(name for name, value in entries.items() if not name.startswith("_")
                 and isinstance(value, list) and len(value) == 2 and None not in value)


def check_model_location(path_or_id: str, key: str) -> None:
    """Before anything loads: config key ``key`` names a model, and one that is an existing
    local path or could be a Hugging Face Hub id (the hub checks those when they load)."""
    if not path_or_id:
        raise ConfigError(f"{key} is required (a hub id or a local folder)")
    if not Path(os.path.expanduser(path_or_id)).exists() and not looks_like_hub_id(path_or_id):
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


def load_error_reason(error: BaseException) -> str:
    """Why a library could not read a model's files, in a few words: a refused pickle is said as
    such (never torch's advice to load it with ``weights_only=False``, which would run any code
    in it), anything else as the error's type and the first line of its message."""
    chain = [error]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
        if len(chain) > 8:
            break
    text = " ".join(str(e) for e in chain)
    if "weights_only" in text or "Weights only load failed" in text or "Unpickl" in text:
        return ("it holds a pickled weights file (.bin/.pt), which rewardkit refuses to load "
                "because unpickling can run code; convert it to .safetensors with a tool you "
                "trust, or use the model's safetensors weights")
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {first[:200]}" if first else type(error).__name__


@contextlib.contextmanager
def naming_load_errors(what: str) -> Iterator[None]:
    """Turn a library's failure to read ``what`` (a model folder or hub id, said as the user
    gave it: "model_dir '/x'") into one :class:`ConfigError` sentence naming it
    (:func:`load_error_reason`); rewardkit's own errors pass unchanged."""
    try:
        yield
    except RewardkitError:
        raise
    except Exception as error:
        raise ConfigError(f"{what} could not be loaded ({load_error_reason(error)})") from None


def pipeline_class_name(path_or_id: str | Path) -> str | None:
    """The ``_class_name`` of a local pipeline folder's ``model_index.json`` (``None`` for a
    hub id or when it cannot be read)."""
    try:
        data = json.loads((Path(os.path.expanduser(str(path_or_id))) / "model_index.json")
                          .read_text())
    except (OSError, ValueError):
        return None
    name = data.get("_class_name") if isinstance(data, dict) else None
    return name if isinstance(name, str) else None


def check_student_folder(path_or_id: str, key: str = "model_dir") -> None:
    """Refuse a local teacher folder where a distilled student is expected: its UNet has no
    guidance embedding (``time_cond_proj_dim``) and its scheduler is not ``LCMScheduler``, so
    sampling it as a few-step LCM student would silently give a teacher's poor few-step images.
    Hub ids and unreadable configs pass (loading names those)."""
    folder = Path(os.path.expanduser(str(path_or_id)))
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text())
        scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    except (OSError, ValueError):
        return
    if not (isinstance(unet, dict) and isinstance(scheduler, dict)):
        return
    if unet.get("time_cond_proj_dim") is None and scheduler.get("_class_name") != "LCMScheduler":
        raise ConfigError(f"{key} '{path_or_id}' is a teacher, not a distilled student (its UNet "
                          "has no guidance embedding and its scheduler is "
                          f"{scheduler.get('_class_name')}); sample it with --teacher (DDIM and "
                          "guidance), or pass a student pipeline (a run's pipeline/)")


def model_fingerprint(location: str | Path) -> str:
    """A model's identity by content, cheap enough for a multi-GB pipeline: for a local folder
    (a pipeline or a training checkpoint) a SHA-256 over every file's relative path and size,
    the whole of its small files (configs, tokenizer) and the first and last MiB of its large
    ones (weights); for a hub id, the id. Copies of a model give the same fingerprint, another
    model (other weights) another one."""
    import hashlib

    path = Path(location).expanduser()
    if not path.is_dir():
        return f"hub:{location}"
    digest = hashlib.sha256()
    chunk = 1 << 20
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        relative = file.relative_to(path).as_posix()
        if any(part.startswith(".") for part in file.parts[len(path.parts):]):
            continue  # a half-written file aside, a cache
        size = file.stat().st_size
        digest.update(f"{relative}\0{size}\0".encode())
        with open(file, "rb") as handle:
            if size <= 2 * chunk:
                digest.update(handle.read())
            else:
                digest.update(handle.read(chunk))
                handle.seek(size - chunk)
                digest.update(handle.read(chunk))
    return digest.hexdigest()


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare module inside DDP/DataParallel (``.module``) and ``torch.compile`` (``._orig_mod``)."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


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
    UNet's down blocks still have a latent pixel to halve; a transformer teacher (SD3's
    ``transformer/``) needs latents that are a multiple of its patch size. Hub ids are checked
    when they load."""
    path = Path(os.path.expanduser(teacher))
    if not (path / "model_index.json").is_file():
        return
    vae = read_model_config(path / "vae" / "config.json")
    factor = 2 ** (len(vae.get("block_out_channels") or [0]) - 1)
    if (path / "transformer" / "config.json").is_file() and not (path / "unet").is_dir():
        patch = int(read_model_config(path / "transformer" / "config.json").get("patch_size") or 1)
        step = factor * patch
        if resolution % step:
            raise ConfigError(
                f"{key} {resolution} does not fit the teacher '{teacher}': it must be a multiple "
                f"of {step} (the VAE's downscale factor {factor} times the transformer's patch "
                f"size {patch}); try {key} {max(step, round(resolution / step) * step)}")
        return
    unet = read_model_config(path / "unet" / "config.json")
    halvings = max(len(unet.get("down_block_types") or [0]) - 1, 0)
    smallest = factor * 2 ** halvings
    if resolution % factor or resolution < smallest:
        fits = max(smallest, round(resolution / factor) * factor)
        raise ConfigError(
            f"{key} {resolution} does not fit the teacher '{teacher}': it must be a multiple of "
            f"{factor} (the VAE's downscale factor) and at least {smallest} (the UNet halves the "
            f"latents {halvings} times); try {key} {fits}")


__all__ = ["PIPELINE_PARTS", "resolve_dtype", "looks_like_hub_id", "check_pipeline_location",
           "check_vae_location", "transformers_dtype_kwarg", "pipeline_dtype_kwarg", "unwrap_model",
           "load_error_reason", "model_fingerprint", "naming_load_errors", "pipeline_class_name",
           "check_student_folder",
           "check_model_location", "read_model_config", "check_resolution"]
