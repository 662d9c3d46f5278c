"""Where the shipped world models live, and how the small world networks are saved and loaded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypeVar

from torch import nn

from ..errors import ConfigError

#: The folder inside the package that ``rewardkit world build`` fills and the wheel ships.
ASSETS = Path(__file__).parent / "assets"
TEACHER = "teacher"
SCORER = "world-scorer"
FEATURES = "features"
LRM = "lrm"

N = TypeVar("N", bound=nn.Module)


def asset_path(name: str, root: Path | None = None) -> Path:
    """The folder of shipped asset ``name``; a clear error if the world was never built."""
    path = (root or ASSETS) / name
    if not path.exists():
        raise ConfigError(f"world asset '{name}' not found in {path.parent}; "
                          f"build the world with `rewardkit world build`")
    return path


def save_net(net: nn.Module, directory: str | Path) -> Path:
    """Write ``config.json`` (the net's ``config`` dict) and ``model.safetensors``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"class": type(net).__name__, **net.config}, indent=2))
    save_file({k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()},
              str(directory / "model.safetensors"))
    return directory


def load_net(cls: type[N], directory: str | Path) -> N:
    """Load a net saved by :func:`save_net` (frozen, eval mode)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"no saved {cls.__name__} in '{directory}' (missing config.json)")
    config = json.loads(config_file.read_text())
    if config.pop("class", cls.__name__) != cls.__name__:
        raise ConfigError(f"'{directory}' holds a different network, not a {cls.__name__}")
    net = cls(**config)
    net.load_state_dict(load_file(str(directory / "model.safetensors")))
    return net.eval().requires_grad_(False)
