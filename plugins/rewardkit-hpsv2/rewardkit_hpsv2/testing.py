"""Offline test helpers: a tiny HPS-format checkpoint built from a small OpenCLIP config.

The tiny model has the real architecture's structure (OpenCLIP ``CLIP``: ViT image tower,
transformer text tower, BPE tokenizer with the full 49408-token vocabulary) at a few layers of
width 32, so it loads through exactly the code that loads the published HPS checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .loading import build_clip

#: A small OpenCLIP config in the format of open_clip's ``model_configs/*.json``.
TINY_HPS_CONFIG: dict = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def build_tiny_hps_checkpoint(directory: str | Path, seed: int = 0,
                              filename: str = "HPS_tiny_compressed.pt") -> tuple[Path, Path]:
    """Save a randomly initialised tiny HPS model as HPS does (``{"state_dict": ...}``).

    Returns ``(checkpoint_path, model_config_path)``; pass them to the reward model as
    ``checkpoint=`` and ``model_config=``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "tiny_hps_config.json"
    config_path.write_text(json.dumps(TINY_HPS_CONFIG, indent=2))
    torch.manual_seed(seed)
    model = build_clip(TINY_HPS_CONFIG)
    checkpoint_path = directory / filename
    torch.save({"epoch": 1, "name": "tiny", "state_dict": model.state_dict()}, checkpoint_path)
    return checkpoint_path, config_path
