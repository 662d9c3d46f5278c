"""Find, build and load an HPS model: OpenCLIP architecture + an HPS checkpoint (hub file or path).

Every checkpoint, the published ones and a test's tiny one, goes through :func:`load_hps_model`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

from rewardkit.errors import ConfigError, RewardModelError
from rewardkit.rewards.checkpoints import read_state_dict

#: The published HPS checkpoints: version -> file in the hub repository :data:`HPS_HUB_REPO`.
HPS_HUB_REPO = "xswu/HPSv2"
HPS_VERSIONS: dict[str, str] = {
    "v2.0": "HPS_v2_compressed.pt",
    "v2.1": "HPS_v2.1_compressed.pt",
}
#: The OpenCLIP architecture HPSv2 fine-tuned.
HPS_ARCHITECTURE = "ViT-H-14"


def _open_clip():
    try:
        import open_clip
    except Exception as exc:  # torchvision that does not match torch fails here too
        raise RewardModelError(
            "reward model 'hpsv2' needs open_clip (pip install open-clip-torch) with a torchvision "
            f"that matches torch; importing it failed: {type(exc).__name__}: {exc}") from exc
    return open_clip


def resolve_checkpoint(version: str, checkpoint: str | None, cache_dir: str | None = None) -> Path:
    """The local file of the HPS weights: ``checkpoint`` if given, else the hub file of ``version``.

    ``checkpoint`` may be a file or a folder holding exactly one ``*.pt``/``*.pth``/``*.bin``/
    ``*.safetensors`` file. Hub downloads use ``huggingface_hub`` (cached; honours ``HF_HOME``).
    """
    if checkpoint:
        path = Path(checkpoint).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.suffix in (".pt", ".pth", ".bin", ".safetensors"))
            if len(found) != 1:
                raise ConfigError(
                    f"reward model 'hpsv2': checkpoint folder '{path}' must hold exactly one "
                    f"weights file (*.pt, *.pth, *.bin, *.safetensors), found {len(found)}")
            return found[0]
        if not path.is_file():
            raise ConfigError(f"reward model 'hpsv2': checkpoint '{path}' does not exist")
        return path
    if version not in HPS_VERSIONS:
        raise ConfigError(f"reward model 'hpsv2': unknown version '{version}'; "
                          f"choose one of {', '.join(HPS_VERSIONS)} or pass checkpoint=PATH")
    from huggingface_hub import hf_hub_download

    filename = HPS_VERSIONS[version]
    try:
        return Path(hf_hub_download(HPS_HUB_REPO, filename, cache_dir=cache_dir))
    except Exception as exc:
        raise RewardModelError(
            f"reward model 'hpsv2' could not download {HPS_HUB_REPO}/{filename} "
            f"({type(exc).__name__}: {exc}); download it elsewhere and pass checkpoint=PATH") from exc


def read_model_config(model_config: str | None) -> dict[str, Any]:
    """The OpenCLIP model config: ViT-H-14's by default, else a JSON file or a registered name.

    A JSON file holds ``{"embed_dim", "vision_cfg", "text_cfg"}`` (OpenCLIP's format, also accepted
    under a ``"model_cfg"`` key as in ``open_clip_config.json``).
    """
    open_clip = _open_clip()
    name = model_config or HPS_ARCHITECTURE
    path = Path(name).expanduser()
    if path.suffix == ".json" or path.is_file():
        if not path.is_file():
            raise ConfigError(f"reward model 'hpsv2': model_config '{path}' does not exist")
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"reward model 'hpsv2': model_config '{path}' is not JSON: {exc}") from exc
        config = config.get("model_cfg", config)
    else:
        config = open_clip.get_model_config(name)
        if config is None:
            raise ConfigError(f"reward model 'hpsv2': model_config '{name}' is neither a JSON file "
                              "nor an OpenCLIP architecture name")
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in config]
    if missing:
        raise ConfigError(f"reward model 'hpsv2': model_config '{name}' lacks {', '.join(missing)}")
    return copy.deepcopy(config)


def build_clip(config: dict[str, Any]) -> torch.nn.Module:
    """An untrained OpenCLIP model of ``config`` (the same classes ``open_clip.create_model`` uses)."""
    open_clip = _open_clip()
    config = copy.deepcopy(config)
    custom_text = config.pop("custom_text", False) or "hf_model_name" in config["text_cfg"]
    model_class = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    return model_class(**config)


def build_tokenizer(config: dict[str, Any]):
    """The text tokenizer for ``config``: OpenCLIP's BPE tokenizer (shipped with open_clip)."""
    open_clip = _open_clip()
    text_cfg = config["text_cfg"]
    context_length = text_cfg.get("context_length", 77)
    if "hf_tokenizer_name" in text_cfg:
        from open_clip.tokenizer import HFTokenizer

        return HFTokenizer(text_cfg["hf_tokenizer_name"], context_length=context_length)
    return open_clip.SimpleTokenizer(context_length=context_length)


def load_hps_model(checkpoint_path: Path, model_config: str | None = None,
                   weights_only: bool = True) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """Build the architecture, load the checkpoint strictly, freeze it.

    Returns ``(model, tokenizer, config)``; the model is in eval mode without gradients.
    """
    config = read_model_config(model_config)
    model = build_clip(config)
    state_dict = read_state_dict(checkpoint_path, "hpsv2", weights_only=weights_only)
    if "logit_scale" in state_dict and state_dict["logit_scale"].ndim != model.logit_scale.ndim:
        state_dict["logit_scale"] = state_dict["logit_scale"].reshape(model.logit_scale.shape)
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as exc:  # a tensor of the wrong shape
        raise RewardModelError(
            f"reward model 'hpsv2': checkpoint '{checkpoint_path}' does not fit the model config "
            f"'{model_config or HPS_ARCHITECTURE}': {exc}") from exc
    if result.missing_keys or result.unexpected_keys:
        raise RewardModelError(
            f"reward model 'hpsv2': checkpoint '{checkpoint_path}' does not fit the model config "
            f"'{model_config or HPS_ARCHITECTURE}': {_key_summary(result.missing_keys, 'missing')}"
            f"{'; ' if result.missing_keys and result.unexpected_keys else ''}"
            f"{_key_summary(result.unexpected_keys, 'unexpected')}")
    model.eval().requires_grad_(False)
    return model, build_tokenizer(config), config


def _key_summary(keys: list[str], what: str) -> str:
    if not keys:
        return ""
    shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
    return f"{len(keys)} {what} key(s): {shown}"
