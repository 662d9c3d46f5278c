"""LAION aesthetic-predictor heads: small affine heads on L2-normalised CLIP image embeddings.

Two layouts are recognised from the state dict's keys:

- ``linear``: LAION-AI/aesthetic-predictor (``sa_0_4_vit_l_14_linear.pth``): ``weight``, ``bias``.
- ``mlp``: christophschuhmann/improved-aesthetic-predictor (``sac+logos+ava1-l14-linearMSE.pth``,
  mirrored on the hub as ``trl-lib/ddpo-aesthetic-predictor/aesthetic-model.pth``):
  ``layers.{i}.weight/bias`` of an ``nn.Sequential`` of Linear and Dropout layers. The original
  has its ReLUs commented out and its dropouts are inactive at eval, so the head is the chain of
  its linear layers in index order, which is what :class:`AestheticHead` computes.

Head files are ``.pth``/``.pt``/``.bin`` (loaded with ``torch.load(weights_only=True)``) or
``.safetensors``; given as a local path, or a hub file ``owner/repo/filename`` (or
``hf://owner/repo/filename``) fetched by :func:`download_head_file`.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError

_LAYER_KEY = re.compile(r"^layers\.(\d+)\.(weight|bias)$")


class AestheticHead(nn.Module):
    """A chain of linear layers (no activations) mapping a CLIP embedding to one score."""

    def __init__(self, layers: list[nn.Linear]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    @property
    def in_features(self) -> int:
        return self.layers[0].in_features

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` normalised embeddings -> ``[B]`` scores."""
        out = embeddings
        for layer in self.layers:
            out = layer(out)
        return out[:, 0]


def download_head_file(spec: str) -> Path:
    """Fetch ``owner/repo/filename`` (``hf://`` optional) from the Hugging Face hub; return its path."""
    from huggingface_hub import hf_hub_download

    parts = spec.removeprefix("hf://").split("/")
    if len(parts) < 3:
        raise ConfigError(f"aesthetic head '{spec}' is neither a local file nor a hub file "
                          "of the form owner/repo/filename")
    return Path(hf_hub_download("/".join(parts[:2]), "/".join(parts[2:])))


def resolve_head_file(spec: str | Path) -> Path:
    """A local head file as is; ``hf://owner/repo/file`` or a missing ``owner/repo/file`` from the hub."""
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    looks_local = path.is_absolute() or text.startswith((".", "~")) or len(path.parts) < 3
    if looks_local and not text.startswith("hf://"):
        raise ConfigError(f"aesthetic head file '{spec}' does not exist")
    return download_head_file(text)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` or torch-pickle head file (a nested ``state_dict`` too)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"aesthetic head file '{path}' could not be read: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"aesthetic head file '{path}' does not hold a state dict of tensors")
    return state


def build_head(state: dict[str, torch.Tensor], head_type: str = "auto",
               source: str = "the state dict") -> AestheticHead:
    """Build the head of ``state`` (``head_type``: ``auto``, ``linear`` or ``mlp``)."""
    if head_type == "auto":
        head_type = "linear" if {"weight", "bias"} <= set(state) else "mlp"
    if head_type == "linear":
        if not {"weight", "bias"} <= set(state):
            raise ConfigError(f"aesthetic head {source} is not a linear head (no 'weight'/'bias'); "
                              f"keys: {sorted(state)[:6]}")
        return AestheticHead([_linear(state["weight"], state["bias"])])
    if head_type != "mlp":
        raise ConfigError(f"aesthetic head_type must be 'auto', 'linear' or 'mlp', got {head_type!r}")
    indices = sorted({int(m.group(1)) for k in state if (m := _LAYER_KEY.match(k))})
    if not indices:
        raise ConfigError(f"aesthetic head {source} has neither 'weight'/'bias' nor "
                          f"'layers.N.weight' keys; keys: {sorted(state)[:6]}")
    layers = [_linear(state[f"layers.{i}.weight"], state[f"layers.{i}.bias"]) for i in indices]
    for before, after in zip(layers, layers[1:]):
        if before.out_features != after.in_features:
            raise ConfigError(f"aesthetic head {source}: layer sizes do not chain "
                              f"({before.out_features} -> {after.in_features})")
    if layers[-1].out_features != 1:
        raise ConfigError(f"aesthetic head {source} ends in {layers[-1].out_features} outputs, not 1")
    return AestheticHead(layers)


def load_head(spec: str | Path, head_type: str = "auto") -> AestheticHead:
    """Load an aesthetic head from a local file or hub file (see the module docstring)."""
    path = resolve_head_file(spec)
    return build_head(read_state_dict(path), head_type, source=f"file '{path}'")


def _linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias.reshape(-1))
    return layer
