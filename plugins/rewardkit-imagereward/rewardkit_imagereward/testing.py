"""Offline test helpers: a tiny ImageReward checkpoint folder (weights, configs, tokenizer).

The tiny model has ImageReward's structure (BLIP ViT, cross-attending BERT, the real MLP head)
at a few layers of width 32, saved as the published checkpoint is (a state dict with the same
key names, plus BLIP's unused projections) next to a ``med_config.json``, a ``vision_config.json``
and a BERT tokenizer built from a small ``vocab.txt``. It loads through exactly the code that
loads ``ImageReward.pt``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from .configs import TextConfig, VisionConfig
from .model import ImageRewardModel

_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_WORDS = ("a an the of on in under with and two three red green blue yellow black white cube "
          "ball cat dog house tree sky table lighthouse night day photo painting big small "
          "##s ##ed ##ing").split()

TINY_VISION = VisionConfig(image_size=32, patch_size=8, width=32, depth=2, heads=2)


def tiny_med_config(vocab_size: int) -> dict:
    """A BERT/MED config in the format of ImageReward's ``med_config.json``, at width 32."""
    return {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1,
            "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 32,
            "initializer_range": 0.02, "intermediate_size": 64, "layer_norm_eps": 1e-12,
            "max_position_embeddings": 64, "model_type": "bert", "num_attention_heads": 2,
            "num_hidden_layers": 2, "pad_token_id": 0, "type_vocab_size": 2,
            "vocab_size": vocab_size, "encoder_width": 32, "add_cross_attention": True}


def build_tiny_imagereward(directory: str | Path, seed: int = 0) -> Path:
    """Write a tiny ImageReward checkpoint folder and return it (pass it as ``checkpoint=``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = _SPECIAL + _WORDS
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    med = tiny_med_config(vocab_size=len(vocab) + 2)  # + BLIP's [DEC] and [ENC]
    (directory / "med_config.json").write_text(json.dumps(med, indent=2))
    (directory / "vision_config.json").write_text(json.dumps(dataclasses.asdict(TINY_VISION)))
    torch.manual_seed(seed)
    text = TextConfig(**{k: med[k] for k in (f.name for f in dataclasses.fields(TextConfig))})
    model = ImageRewardModel(TINY_VISION, text)
    with torch.no_grad():  # a non-trivial head, so scores differ clearly between inputs
        for param in model.mlp.parameters():
            param.normal_(0.0, 0.1)
    state = model.state_dict()
    state["blip.vision_proj.weight"] = torch.zeros(16, TINY_VISION.width)  # present in the real file
    state["blip.text_proj.weight"] = torch.zeros(16, med["hidden_size"])
    state["blip.text_encoder.embeddings.position_ids"] = torch.arange(med["max_position_embeddings"])[None]
    torch.save(state, directory / "ImageReward.pt")
    return directory
