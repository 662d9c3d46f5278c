"""Typed configuration: a dataclass per recipe, filled from a TOML/YAML/JSON file plus overrides.

Keys use the diffusers LCD script's spelling (``pretrained_teacher_model``, ``w_min``, ...); dashes
and underscores are interchangeable on the command line. Unknown keys and values of the wrong
type fail here, naming the key, before any model loads.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import sys
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

from .errors import ConfigError

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a flat mapping from ``.toml``, ``.yaml``/``.yml`` or ``.json``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    suffix = path.suffix.lower()
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ConfigError(f"config file '{path}' is not text (a binary file?); pass a TOML, "
                          "YAML or JSON file") from None
    except OSError as exc:
        raise ConfigError(f"config file '{path}' cannot be read ({exc.strerror or exc})") from None
    try:
        if suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover
                import tomli as tomllib
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"config file '{path}' must end in .toml, .yaml, .yml or .json")
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"config file '{path}' could not be parsed: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of keys to values")
    return data


def parse_cli_overrides(args: list[str]) -> dict[str, str | bool]:
    """``["--w_min", "3", "--lora", "--seed=1"]`` -> ``{"w_min": "3", "lora": True, "seed": "1"}``."""
    overrides: dict[str, str | bool] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"unexpected argument '{arg}'; options look like --key value")
        key, eq, value = arg[2:].partition("=")
        key = normalise_key(key)
        if not key:
            raise ConfigError(f"option '{arg}' has no key; options look like --key value")
        if eq:
            overrides[key] = value
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            overrides[key] = args[i + 1]
            i += 1
        else:
            overrides[key] = True
        i += 1
    return overrides


def normalise_key(key: str) -> str:
    """``"w-min "`` -> ``"w_min"``: dashes and underscores are interchangeable."""
    return key.strip().replace("-", "_")


def apply_aliases(config_class: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with the keys of ``config_class.KEY_ALIASES`` (e.g. the reference code's flag
    names) renamed to the keys they stand for; giving both is refused."""
    aliases = getattr(config_class, "KEY_ALIASES", {})
    out = dict(values)
    for alias, key in aliases.items():
        if alias in out:
            if key in out:
                raise ConfigError(f"'{alias}' and '{key}' are the same key ({alias} is its other "
                                  "name); pass one of them")
            out[key] = out.pop(alias)
    return out


def load_config(config_class: type[T], path: str | Path | None = None,
                overrides: Mapping[str, Any] | None = None, validate: bool = True) -> T:
    """Build ``config_class`` from a file and overrides (overrides win), then validate it."""
    values: dict[str, Any] = {}
    if path is not None:
        values.update(apply_aliases(config_class, {normalise_key(k): v
                                                   for k, v in read_config_file(path).items()}))
    values.update(apply_aliases(config_class, {normalise_key(k): v
                                               for k, v in (overrides or {}).items()}))
    config = build_config(config_class, values)
    if validate and hasattr(config, "validate"):
        config.validate()
    return config


def check_keys(config_class: type, values: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` for the first key ``config_class`` does not have (with a hint)."""
    fields = [f.name for f in dataclasses.fields(config_class) if f.init]
    for key in values:
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key '{key}'{hint}")


def build_config(config_class: type[T], values: Mapping[str, Any]) -> T:
    """Instantiate ``config_class`` from ``values``, converting each value to its field's type."""
    fields = {f.name: f for f in dataclasses.fields(config_class) if f.init}  # type: ignore[arg-type]
    hints = typing.get_type_hints(config_class)
    check_keys(config_class, values)
    kwargs = {key: coerce(key, value, hints.get(key, Any)) for key, value in values.items()}
    missing = [name for name, f in fields.items() if name not in kwargs
               and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]  # type: ignore[misc]
    if missing:
        raise ConfigError(f"missing required config key(s): {', '.join(map(repr, missing))}")
    try:
        return config_class(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from exc


def coerce(key: str, value: Any, annotation: Any) -> Any:
    """Convert ``value`` (possibly a CLI string) to ``annotation``; ConfigError names ``key``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return coerce(key, value, option)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"invalid value for '{key}': {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"'{key}' must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ConfigError(f"'{key}' must be true or false, got {value!r}")
    if annotation in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"'{key}' must be a number, got {value!r}")
        try:
            number = annotation(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"'{key}' must be {'an integer' if annotation is int else 'a number'}, "
                              f"got {value!r}") from None
        if annotation is float and not math.isfinite(number):
            raise ConfigError(f"'{key}' must be a finite number, got {value!r}")
        if annotation is int and isinstance(value, float) and value != number:
            raise ConfigError(f"'{key}' must be an integer, got {value!r}")
        return number
    if annotation is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"'{key}' must be a string, got {value!r}")
        return str(value)
    if origin in (list, tuple) or annotation in (list, tuple):
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else [v for v in text.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{key}' must be a list, got {value!r}")
        item_type = args[0] if args else Any
        items = [coerce(key, v, item_type) for v in value]
        return tuple(items) if (origin or annotation) is tuple else items
    if origin is dict or annotation is dict:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ConfigError(f"'{key}' must be a mapping (JSON on the command line), "
                                  f"got {value!r}") from None
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' must be a mapping, got {value!r}")
        return dict(value)
    if isinstance(annotation, type) and issubclass(annotation, Path):
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"'{key}' must be a path, got {value!r}")
        return Path(value)
    return value


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-able dict of a config dataclass (paths as strings)."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        out[f.name] = str(value) if isinstance(value, Path) else value
    return out


REF = "reference default"
"""Provenance of a config default (:func:`config_field`): the RG-LCD reference code or
diffusers' script."""
OURS = "rewardkit default"
"""Provenance of a config default (:func:`config_field`): rewardkit's own choice."""


def config_field(default: Any, help: str, provenance: str = REF, **kwargs: Any) -> Any:
    """A recipe config field: ``default``, and ``help`` (shown by ``rewardkit describe`` and
    ``rewardkit run RECIPE --help``) ending with where the default comes from (``REF``: the
    reference / diffusers script; ``OURS``: rewardkit's). A list or dict default is copied per
    instance."""
    meta = {"help": f"{help} ({provenance})", "provenance": provenance}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta,
                                 **kwargs)
    return dataclasses.field(default=default, metadata=meta, **kwargs)
