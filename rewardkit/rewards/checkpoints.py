"""Reading reward-model checkpoints (for RMs whose weights are not in a transformers folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import RewardModelError


def read_state_dict(path: Path, reward_name: str, weights_only: bool = True) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` or torch checkpoint, for reward model ``reward_name``.

    Accepts a bare state dict or one nested under ``state_dict`` / ``model``; a ``module.``
    prefix (DDP training) is removed. Errors name the RM and the file.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data: Any = load_file(str(path))
        else:
            data = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as exc:
        hint = (" (if you trust the file, pass weights_only=False)"
                if weights_only and path.suffix != ".safetensors" else "")
        raise RewardModelError(f"reward model '{reward_name}' could not read checkpoint '{path}': "
                               f"{type(exc).__name__}: {exc}{hint}") from exc
    for key in ("state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise RewardModelError(f"reward model '{reward_name}': checkpoint '{path}' holds no state dict")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in data.items()}
