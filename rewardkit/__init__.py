"""rewardkit: align fast text-to-image generators with reward models, through plugins.

``import rewardkit as rk`` gives the components of every installed plugin::

    rk.plugins()                       # what is installed, and what is broken
    rk.reward_model("clip-score")      # any registered reward model
    rk.recipe("rg-lcd").run()          # the paper's training recipe
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .api import (backbone, components, describe, plugins, proxy_model, recipe,
                  reward_model, solver)
from .errors import (ConfigError, DataError, PluginError, RewardkitError, RewardModelError,
                     UnknownComponentError)
from .hookspecs import hookimpl

try:
    __version__ = version("rewardkit")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = [
    "__version__", "hookimpl", "plugins", "components", "describe", "reward_model", "proxy_model",
    "solver", "backbone", "recipe", "RewardkitError", "ConfigError", "DataError", "PluginError",
    "RewardModelError", "UnknownComponentError",
]
