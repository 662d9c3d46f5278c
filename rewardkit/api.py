"""The Python face of rewardkit: the same components the CLI shows, resolved through the host.

>>> import rewardkit as rk
>>> rm = rk.reward_model("jpeg-compressibility")
>>> scores = rm(images, prompts)            # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

from .components import ComponentSpec
from .config import apply_aliases, check_keys, load_config, normalise_key
from .errors import ConfigError, PluginError
from .plugins import get_host
from .recipes.given import mark_given, take_given, without_tied_defaults


def plugins() -> list[dict[str, Any]]:
    """Every plugin with its status, version, errors and what it registers (as ``rewardkit plugins``)."""
    return [info.as_dict() for info in get_host().plugins.values()]


def components(kind: str) -> list[ComponentSpec]:
    """The registered components of ``kind`` (reward, proxy, solver, backbone, recipe)."""
    return get_host().list(kind)


def describe(kind: str, name: str) -> ComponentSpec:
    """The spec of one component: plugin, description, parameters and defaults."""
    return get_host().get(kind, name)


def reward_model(name: str, **params: Any):
    """Build the reward model ``name`` (a :class:`rewardkit.rewards.RewardModel`)."""
    return get_host().get("reward", name).build(**params)


def proxy_model(name: str, **params: Any):
    """Build the proxy reward model ``name`` (a :class:`rewardkit.proxies.ProxyRewardModel`)."""
    return get_host().get("proxy", name).build(**params)


def solver(name: str, **params: Any):
    """Build the consistency solver ``name`` (a :class:`rewardkit.solvers.ConsistencySolver`)."""
    return get_host().get("solver", name).build(**params)


def backbone(name: str, **params: Any):
    """Load the backbone ``name`` (a :class:`rewardkit.backbones.Backbone`)."""
    return get_host().get("backbone", name).build(**params)


def recipe(name: str, config: str | Path | Mapping[str, Any] | None = None, **overrides: Any):
    """Build the recipe ``name`` from a config (file path or mapping) plus keyword overrides.

    A key that names a component (the recipe's ``component_keys``: ``reward``, ``proxy``,
    ``solver``) also takes a built instance, used as it is: ``rk.recipe("rg-lcd",
    reward=rk.reward_model("clip-score"))`` or an RM of your own that no plugin registers.

    The config is validated (unknown keys, wrong types) before the recipe is built; nothing
    heavy loads until ``.run()``.
    """
    spec = get_host().get("recipe", name)
    config_class = getattr(spec.factory, "Config", None)
    if not dataclasses.is_dataclass(config_class):
        raise PluginError(f"recipe '{name}' from plugin '{spec.plugin}' has no Config dataclass")
    path = None
    if isinstance(config, Mapping):
        overrides = {**config, **overrides}
    else:
        path = config
    overrides = apply_aliases(config_class, {normalise_key(k): v for k, v in overrides.items()})
    check_keys(config_class, overrides)  # a typo is reported before any default is resolved
    given = take_given(spec.factory, name, overrides)  # built objects out, their names in
    if path is None and not _required_given(config_class, overrides):
        embedded = getattr(spec.factory, "embedded_defaults", None)
        defaults = embedded(dict(overrides)) if embedded is not None else {}
        defaults = without_tied_defaults(defaults, given)
        overrides = {**defaults, **overrides}  # the embedded default world, user values on top
    config = load_config(config_class, path, overrides, validate=False)
    for key in given:  # a config file's {key}_params cannot configure an object already built
        if getattr(config, f"{key}_params", None):
            raise ConfigError(f"{key}_params: the {key} was passed built, so it is used as it is; "
                              f"configure it when you build it and drop {key}_params")
    mark_given(config, given)
    config.validate()
    return spec.factory(config, components=given) if given else spec.factory(config)


def _required_given(config_class: type, values: Mapping[str, Any]) -> bool:
    """True if any required key (e.g. the teacher) is given: the user chose a real setting."""
    given = set(values)
    return any(f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
               and f.name in given for f in dataclasses.fields(config_class) if f.init)
