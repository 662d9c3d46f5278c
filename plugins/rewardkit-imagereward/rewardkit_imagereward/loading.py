"""Find and load ImageReward: checkpoint (hub file or path), MED/BERT config, tokenizer, vision config.

Every checkpoint, the published ``ImageReward.pt`` and a test's tiny one, goes through
:func:`load_imagereward`. Nothing is fetched at run time except the checkpoint named by the hub
id and the ``bert-base-uncased`` tokenizer when no local tokenizer is given.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rewardkit.errors import ConfigError, RewardModelError
from rewardkit.rewards.checkpoints import read_state_dict

from .configs import (TextConfig, VisionConfig, packaged_med_config, read_json,
                      text_config_from, vision_config_from)
from .model import ImageRewardModel

#: Published checkpoints: name -> file in the hub repository :data:`IMAGEREWARD_HUB_REPO`.
IMAGEREWARD_HUB_REPO = "THUDM/ImageReward"
IMAGEREWARD_CHECKPOINTS = {"ImageReward-v1.0": "ImageReward.pt"}
DEFAULT_TOKENIZER = "bert-base-uncased"
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
#: Checkpoint entries the scorer does not use (BLIP's contrastive projections, BERT's position ids).
_UNUSED_PREFIXES = ("blip.vision_proj.", "blip.text_proj.")


@dataclass
class LoadedImageReward:
    """What :func:`load_imagereward` returns."""

    model: ImageRewardModel
    tokenizer: Any
    checkpoint_path: Path


def resolve_checkpoint(checkpoint: str, cache_dir: str | None = None) -> Path:
    """The local weights file: a published name (downloaded once), a file, or a folder holding
    ``ImageReward.pt`` or exactly one weights file."""
    if checkpoint in IMAGEREWARD_CHECKPOINTS:
        from huggingface_hub import hf_hub_download

        filename = IMAGEREWARD_CHECKPOINTS[checkpoint]
        try:
            return Path(hf_hub_download(IMAGEREWARD_HUB_REPO, filename, cache_dir=cache_dir))
        except Exception as exc:
            raise RewardModelError(
                f"reward model 'imagereward' could not download {IMAGEREWARD_HUB_REPO}/{filename} "
                f"({type(exc).__name__}: {exc}); download it elsewhere and pass checkpoint=PATH"
            ) from exc
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        if (path / "ImageReward.pt").is_file():
            return path / "ImageReward.pt"
        found = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
        if len(found) != 1:
            raise ConfigError(f"reward model 'imagereward': checkpoint folder '{path}' must hold "
                              f"ImageReward.pt or exactly one weights file, found {len(found)}")
        return found[0]
    if not path.is_file():
        raise ConfigError(
            f"reward model 'imagereward': checkpoint '{checkpoint}' is neither a published name "
            f"({', '.join(IMAGEREWARD_CHECKPOINTS)}) nor an existing file or folder")
    return path


def resolve_text_config(med_config: str | None, folder: Path | None) -> TextConfig:
    """``med_config`` if given, else ``<checkpoint folder>/med_config.json``, else the packaged one."""
    if med_config is None and folder is not None and (folder / "med_config.json").is_file():
        med_config = str(folder / "med_config.json")
    if med_config is None:
        return text_config_from(packaged_med_config(), "packaged med_config.json")
    return text_config_from(read_json(med_config, "med_config"), med_config)


def resolve_vision_config(vision_config: str | None, folder: Path | None) -> VisionConfig:
    """``vision_config`` if given, else ``<checkpoint folder>/vision_config.json``, else ViT-L/16."""
    if vision_config is None and folder is not None and (folder / "vision_config.json").is_file():
        vision_config = str(folder / "vision_config.json")
    if vision_config is None:
        return VisionConfig()
    return vision_config_from(read_json(vision_config, "vision_config"), vision_config)


def resolve_tokenizer_source(tokenizer: str | None, folder: Path | None) -> str:
    """``tokenizer`` if given, else the checkpoint folder when it holds one, else bert-base-uncased."""
    if tokenizer:
        return tokenizer
    if folder is not None and any((folder / f).is_file()
                                  for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json")):
        return str(folder)
    return DEFAULT_TOKENIZER


def load_tokenizer(source: str, vocab_size: int):
    """BLIP's tokenizer: BERT's WordPiece plus the ``[DEC]`` and ``[ENC]`` special tokens."""
    from transformers import BertTokenizer

    local = Path(source).expanduser()
    try:
        tokenizer = BertTokenizer.from_pretrained(str(local) if local.exists() else source)
    except Exception as exc:
        raise RewardModelError(
            f"reward model 'imagereward' could not load the tokenizer '{source}' "
            f"({type(exc).__name__}: {exc}); pass tokenizer=PATH to a local copy of "
            f"{DEFAULT_TOKENIZER} (a folder with vocab.txt)") from exc
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    if len(tokenizer) > vocab_size:
        raise ConfigError(f"reward model 'imagereward': tokenizer '{source}' has {len(tokenizer)} "
                          f"tokens but the text encoder's vocab_size is {vocab_size}")
    return tokenizer


def build_model_from_state_dict(state_dict: dict[str, torch.Tensor], vision: VisionConfig,
                                text: TextConfig, source: Path) -> ImageRewardModel:
    """Build on the meta device (no wasted random init) and assign the checkpoint's tensors."""
    with torch.device("meta"):
        model = ImageRewardModel(vision, text)
    expected = set(model.state_dict())
    missing = sorted(expected - set(state_dict))
    if missing:
        raise RewardModelError(
            f"reward model 'imagereward': checkpoint '{source}' does not fit the configured "
            f"architecture: {_key_summary(missing, 'missing')} (check med_config/vision_config)")
    unexpected = sorted(k for k in set(state_dict) - expected
                        if not k.startswith(_UNUSED_PREFIXES) and not k.endswith("position_ids"))
    if unexpected:  # ImageReward itself loads with strict=False; say so instead of failing
        warnings.warn(f"reward model 'imagereward': checkpoint '{source}' has "
                      f"{_key_summary(unexpected, 'unused')}", stacklevel=3)
    try:
        model.load_state_dict({k: state_dict[k] for k in expected}, strict=True, assign=True)
    except RuntimeError as exc:  # a tensor of the wrong shape
        raise RewardModelError(f"reward model 'imagereward': checkpoint '{source}' does not fit "
                               f"the configured architecture: {exc}") from exc
    return model


def load_imagereward(checkpoint: str, *, med_config: str | None = None,
                     tokenizer: str | None = None, vision_config: str | None = None,
                     cache_dir: str | None = None, weights_only: bool = True) -> LoadedImageReward:
    """Resolve every part and load the frozen model (eval mode, float32, CPU) and tokenizer."""
    path = resolve_checkpoint(checkpoint, cache_dir)
    folder = Path(checkpoint).expanduser() if Path(checkpoint).expanduser().is_dir() else None
    vision = resolve_vision_config(vision_config, folder)
    text = resolve_text_config(med_config, folder)
    tok = load_tokenizer(resolve_tokenizer_source(tokenizer, folder), text.vocab_size)
    state_dict = read_state_dict(path, "imagereward", weights_only)
    model = build_model_from_state_dict(state_dict, vision, text, path)
    model.float().eval().requires_grad_(False)
    return LoadedImageReward(model=model, tokenizer=tok, checkpoint_path=path)


def _key_summary(keys: list[str], what: str) -> str:
    shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
    return f"{len(keys)} {what} key(s): {shown}"
