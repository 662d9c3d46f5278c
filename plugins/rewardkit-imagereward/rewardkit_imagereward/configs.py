"""The two architecture configs of ImageReward: the BLIP ViT image tower and the BERT ("MED")
text encoder with cross-attention. Defaults are ImageReward-v1.0's (ViT-L/16 at 224; BERT-base)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from rewardkit.errors import ConfigError


@dataclass(frozen=True)
class VisionConfig:
    """BLIP's ``VisionTransformer`` ('large' = ImageReward's: width 1024, 24 blocks, 16 heads)."""

    image_size: int = 224
    patch_size: int = 16
    width: int = 1024
    depth: int = 24
    heads: int = 16
    mlp_ratio: float = 4.0
    layer_norm_eps: float = 1e-6


@dataclass(frozen=True)
class TextConfig:
    """BLIP's ``med.BertModel`` (BERT-base with a cross-attention block in every layer).

    Read from a ``med_config.json`` (a BERT config); ``encoder_width`` is set to the vision width.
    """

    vocab_size: int = 30524
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    max_position_embeddings: int = 512
    pad_token_id: int = 0
    encoder_width: int = 768


def read_json(path: str | Path, what: str) -> dict[str, Any]:
    """A JSON object from ``path``; a :class:`ConfigError` naming the file otherwise."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"reward model 'imagereward': {what} '{path}' does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"reward model 'imagereward': {what} '{path}' is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"reward model 'imagereward': {what} '{path}' must hold a JSON object")
    return data


def packaged_med_config() -> dict[str, Any]:
    """The ``med_config.json`` shipped with this package (BLIP's as THUDM/ImageReward publishes it)."""
    text = resources.files("rewardkit_imagereward").joinpath("med_config.json").read_text()
    return json.loads(text)


def text_config_from(data: dict[str, Any], source: str) -> TextConfig:
    """The :class:`TextConfig` of a BERT/MED config dict; unsupported variants are refused."""
    if data.get("position_embedding_type", "absolute") != "absolute":
        raise ConfigError(f"reward model 'imagereward': med_config '{source}' uses "
                          f"position_embedding_type={data['position_embedding_type']!r}; "
                          "only 'absolute' is supported")
    if not data.get("add_cross_attention", True):
        raise ConfigError(f"reward model 'imagereward': med_config '{source}' has "
                          "add_cross_attention=false; ImageReward needs cross-attention")
    names = {f.name for f in dataclasses.fields(TextConfig)}
    return TextConfig(**{k: v for k, v in data.items() if k in names})


def vision_config_from(data: dict[str, Any], source: str) -> VisionConfig:
    """The :class:`VisionConfig` of a dict; unknown keys are refused, naming ``source``."""
    names = {f.name for f in dataclasses.fields(VisionConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"reward model 'imagereward': vision_config '{source}' has unknown "
                          f"key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    return VisionConfig(**data)
