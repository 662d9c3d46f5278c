"""rewardkit: align fast text-to-image generators with reward models, through plugins.

``import rewardkit as rk`` gives the components of every installed plugin::

    rk.plugins()                       # what is installed, and what is broken
    rk.reward_model("clip-score")      # any registered reward model
    rk.recipe("rg-lcd").run()          # the paper's training recipe

and the building blocks of new training algorithms: ``backbone.load_student(path)`` (a saved
student as a trainable UNet), ``rk.sample_consistency`` (few-step sampling with gradients
through chosen steps) and ``rk.build_prompt_loader`` (resumable, rank-sharded prompt batches).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .api import (backbone, components, describe, plugins, proxy_model, recipe,
                  reward_model, solver)
from .errors import (ConfigError, DataError, PluginError, RewardkitError, RewardModelError,
                     UnknownComponentError)
from .hookspecs import hookimpl

#: Building blocks for new training algorithms, imported on first use (they need torch, which
#: ``import rewardkit`` alone does not load): name -> module.
_LAZY = {
    "sample_consistency": "rewardkit.sampling_grad",
    "build_prompt_loader": "rewardkit.data.prompts",
    "PromptLoader": "rewardkit.data.prompts",
}

try:
    __version__ = version("rewardkit")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = [
    "__version__", "hookimpl", "plugins", "components", "describe", "reward_model", "proxy_model",
    "solver", "backbone", "recipe", "RewardkitError", "ConfigError", "DataError", "PluginError",
    "RewardModelError", "UnknownComponentError", *_LAZY,
]


def __getattr__(name: str):
    """Import the lazily exported building blocks (:data:`_LAZY`) on first use."""
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'rewardkit' has no attribute '{name}'")
    import importlib

    return getattr(importlib.import_module(module_name), name)
