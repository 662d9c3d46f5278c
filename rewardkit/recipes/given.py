"""Components a Python caller passes already built, instead of by name.

``rk.recipe("rg-lcd", reward=my_rm)`` composes a recipe from objects (one of the three ways
people use rewardkit), while ``rewardkit run`` names registered components. A recipe declares
the config keys that name a component (:attr:`rewardkit.recipes.base.Recipe.component_keys`:
key -> (kind, base class)). :func:`take_given` moves built objects out of the overrides and puts
their ``name`` in their place (so ``config.json`` still says what was used); :func:`mark_given`
records on the config which keys came built, and a config's ``validate`` skips the registry
lookup for those (:func:`is_given`). The recipe then uses the object itself
(``recipe.components[key]``).
"""

from __future__ import annotations

from typing import Any, Mapping, MutableMapping

from ..errors import ConfigError

_ATTRIBUTE = "_given_components"


def take_given(recipe_class: type, recipe_name: str,
               overrides: MutableMapping[str, Any]) -> dict[str, Any]:
    """Pop built components out of ``overrides`` (replacing each by its name); return them.

    A value of a component key that is neither a name nor an instance of the key's base class is
    refused, naming the key and what to pass; so is a ``{key}_params`` next to a built object.
    """
    keys: Mapping[str, tuple[str, type]] = getattr(recipe_class, "component_keys", {})
    given: dict[str, Any] = {}
    for key, value in list(overrides.items()):
        if key not in keys or value is None or isinstance(value, str):
            continue
        kind, base = keys[key]
        if isinstance(value, type) or not isinstance(value, base):
            what = f"the class {value.__name__}" if isinstance(value, type) else f"a {type(value).__name__}"
            raise ConfigError(
                f"{key}: recipe '{recipe_name}' takes a registered {kind} name (see `rewardkit "
                f"list {kind}`) or a built {base.__module__}.{base.__qualname__} instance; got "
                f"{what}")
        if overrides.get(f"{key}_params"):
            raise ConfigError(f"{key}_params: the {kind} was passed built, so it is used as it "
                              f"is; configure it when you build it and drop {key}_params")
        given[key] = value
        overrides[key] = getattr(value, "name", None) or type(value).__name__
    return given


#: Config keys that only mean something for a component built by name (dropped from a preset's
#: defaults when that component comes built).
TIED_KEYS: dict[str, tuple[str, ...]] = {"proxy": ("pretrained_proxy",)}


def without_tied_defaults(defaults: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """``defaults`` (a preset's) without the keys of components that came built: their
    ``{key}_params`` and :data:`TIED_KEYS` (a built proxy has no ``pretrained_proxy``)."""
    dropped = {f"{key}_params" for key in given} | {k for key in given for k in TIED_KEYS.get(key, ())}
    return {k: v for k, v in defaults.items() if k not in dropped}


def mark_given(config: Any, keys: Mapping[str, Any] | frozenset[str]) -> None:
    """Record on ``config`` which of its component keys came built (validation skips them)."""
    object.__setattr__(config, _ATTRIBUTE, frozenset(keys))


def is_given(config: Any, key: str) -> bool:
    """True when the component of config key ``key`` was passed built (not by name)."""
    return key in getattr(config, _ATTRIBUTE, frozenset())


__all__ = ["take_given", "mark_given", "is_given", "without_tied_defaults"]
