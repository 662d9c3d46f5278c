"""Presets: what a recipe runs with when started without its required keys, through the host.

A plugin registers presets with the ``register_presets`` hook (the embedded world registers
``world``: ``rewardkit run rg-lcd`` on a laptop). The core knows no preset by name: a recipe
asks for the first preset, by name, whose ``recipes`` include it, and after a run whose config
sets ``report`` it calls that preset's ``after_run``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError


def preset_for(recipe: str) -> Any | None:
    """An instance of the first registered preset (by name) that serves ``recipe``, or None."""
    from ..plugins import get_host

    for spec in get_host().list("preset"):
        if recipe in getattr(spec.factory, "recipes", ()):
            return spec.factory()
    return None


def preset_defaults(recipe: str, chosen: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config overrides of ``recipe``'s preset (none registered: ``{}``)."""
    preset = preset_for(recipe)
    return dict(preset.defaults(recipe, dict(chosen or {}))) if preset is not None else {}


def after_run(recipe: Any, output_dir: str | Path) -> Any:
    """Call ``after_run`` of the preset serving ``recipe`` (its report, for instance); return
    what it returns. A run asking for a report that no preset can write is refused."""
    preset = preset_for(recipe.name)
    hook = getattr(preset, "after_run", None)
    if hook is None:
        raise ConfigError(f"report: no registered preset writes a report after '{recipe.name}' "
                          "(the embedded world's does; is rewardkit.world.plugin disabled?); "
                          "drop report")
    return hook(recipe, Path(output_dir))


__all__ = ["preset_for", "preset_defaults", "after_run"]
