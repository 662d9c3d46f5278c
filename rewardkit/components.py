"""What a registered component is: its kind, name, plugin, description and parameters.

A :class:`ComponentSpec` is built from the factory alone (no weights are loaded), so the CLI can
list and document every component cheaply.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

#: The component kinds, in the order the CLI lists them. The keys are the CLI's KIND words.
KINDS: dict[str, str] = {
    "reward": "register_reward_models",
    "proxy": "register_proxy_models",
    "solver": "register_solvers",
    "backbone": "register_backbones",
    "recipe": "register_recipes",
    "data": "register_data_sources",
    "preset": "register_presets",
    "prompts": "register_prompt_sets",
    "metric": "register_metrics",
}


@dataclass(frozen=True)
class Param:
    """One configurable parameter of a component."""

    name: str
    type: str
    default: Any = None
    required: bool = False
    help: str = ""
    group: str = ""  # the topic ``rewardkit run RECIPE --help`` lists it under (a config's KEY_GROUPS)

    def as_dict(self) -> dict[str, Any]:
        default = self.default
        if not isinstance(default, (str, int, float, bool, type(None), list, tuple, dict)):
            default = repr(default)
        described = {"name": self.name, "type": self.type, "default": default,
                     "required": self.required, "help": self.help}
        return {**described, "group": self.group} if self.group else described


@dataclass(frozen=True)
class ComponentSpec:
    """A component as registered: enough to list, document and build it."""

    kind: str
    name: str
    factory: Callable[..., Any] = field(repr=False)
    plugin: str
    description: str
    params: tuple[Param, ...] = ()

    def build(self, **params: Any) -> Any:
        """Build the component; unknown parameter names are rejected with the valid ones listed."""
        from .errors import ConfigError

        unknown = self.unknown_params(params)
        if unknown:
            known = sorted(p.name for p in self.params)
            raise ConfigError(
                f"{self.kind} '{self.name}' has no parameter {', '.join(map(repr, unknown))}; "
                f"its parameters are: {', '.join(known) or '(none)'}"
            )
        missing = [p.name for p in self.params if p.required and p.name not in params]
        if missing:
            raise ConfigError(
                f"{self.kind} '{self.name}' needs the parameter(s) {', '.join(map(repr, missing))}")
        config_class = getattr(self.factory, "Config", None)
        if dataclasses.is_dataclass(config_class):  # factories with a Config take one instance
            return self.factory(config_class(**params))
        return self.factory(**params)

    def unknown_params(self, params: Iterable[str]) -> list[str]:
        """The names in ``params`` that are not parameters of this component, sorted (none
        when its factory takes ``**kwargs``)."""
        if _accepts_var_kwargs(self.factory):
            return []
        return sorted(set(params) - {p.name for p in self.params})

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "plugin": self.plugin,
                "description": self.description, "params": [p.as_dict() for p in self.params]}


def describe_factory(factory: Callable[..., Any]) -> tuple[Param, ...]:
    """The parameters of ``factory``: its ``Config`` dataclass fields, else its signature."""
    config_class = getattr(factory, "Config", None)
    if dataclasses.is_dataclass(config_class):
        return tuple(_param_from_field(f, config_class) for f in dataclasses.fields(config_class)
                     if f.init and not f.name.startswith("_"))
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # builtins without a signature
        return ()
    hints = _type_hints(target)
    helps = {**docstring_params(factory), **(docstring_params(target) if target is not factory
                                              else {})}
    params = []
    for p in signature.parameters.values():
        if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        required = p.default is inspect.Parameter.empty
        params.append(Param(
            name=p.name,
            type=_type_name(hints.get(p.name, p.annotation)),
            default=None if required else p.default,
            required=required,
            help=helps.get(p.name, ""),
        ))
    return tuple(params)


_SECTION = re.compile(r"^(Args|Arguments|Parameters|Params|Returns|Raises|Yields|Example|Examples|"
                      r"Note|Notes|Attributes)\s*:\s*$")
_GOOGLE_ENTRY = re.compile(r"^(\w+)(?:\s*\([^)]*\))?\s*:\s*(.*)$")
_BULLET_ENTRY = re.compile(r"^-\s+((?:``\w+``(?:\s*,\s*|\s+and\s+|\s*\.\.\.\s*)?)+)"
                           r"(?:\s*\([^)]*\))?\s*:\s*(.*)$")


def docstring_params(obj: Any) -> dict[str, str]:
    """Help texts of parameters from ``obj``'s docstring: a Google-style ``Args:`` section
    (``name (type): text``, continuation lines indented) or bullets ``- ``name``: text``
    (several names in one bullet share its text). Used by ``describe`` for factories without a
    ``Config`` dataclass."""
    doc = inspect.getdoc(obj) or ""
    found: dict[str, str] = {}
    in_args, current, indent = False, None, 0
    for raw in doc.splitlines():
        line = raw.strip()
        section = _SECTION.match(line)
        if section:
            in_args, current = section.group(1) in ("Args", "Arguments", "Parameters", "Params"), None
            continue
        bullet = _BULLET_ENTRY.match(line)
        if bullet:
            names = re.findall(r"``(\w+)``", bullet.group(1))
            for name in names:
                found.setdefault(name, bullet.group(2).strip())
            current = names if len(names) == 1 else None
            indent = len(raw) - len(raw.lstrip())
            continue
        if in_args and line:
            entry = _GOOGLE_ENTRY.match(line)
            this_indent = len(raw) - len(raw.lstrip())
            if entry and (current is None or this_indent <= indent):
                current, indent = [entry.group(1)], this_indent
                found[entry.group(1)] = entry.group(2).strip()
                continue
        if current and line and len(raw) - len(raw.lstrip()) > indent:
            for name in current:
                found[name] = f"{found[name]} {line}".strip()
            continue
        if not line:
            current = None
    return found


def first_doc_line(obj: Any) -> str:
    """The first line of ``obj``'s docstring (inherited ones included), or ``""``."""
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _param_from_field(f: dataclasses.Field, owner: type) -> Param:
    hints = _type_hints(owner)
    if f.default is not dataclasses.MISSING:
        default, required = f.default, False
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        default, required = f.default_factory(), False  # type: ignore[misc]
    else:
        default, required = None, True
    groups = getattr(owner, "KEY_GROUPS", {})
    group = next((title for title, keys in groups.items() if f.name in keys), "")
    return Param(name=f.name, type=_type_name(hints.get(f.name, f.type)), default=default,
                 required=required, help=f.metadata.get("help", ""), group=group)


def _type_hints(obj: Any) -> dict[str, Any]:
    """Resolved annotations; an annotation that cannot be resolved falls back to its text."""
    try:
        return typing.get_type_hints(obj)
    except Exception:  # a forward reference to a name the plugin imports lazily
        return dict(getattr(obj, "__annotations__", {}) or {})


def _type_name(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty or annotation is None:
        return "any"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _accepts_var_kwargs(factory: Callable[..., Any]) -> bool:
    if dataclasses.is_dataclass(getattr(factory, "Config", None)):
        return False
    target = factory.__init__ if inspect.isclass(factory) else factory
    if target is object.__init__:  # no constructor of its own: takes no parameters
        return False
    try:
        return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return False
