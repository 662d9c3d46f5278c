"""The plugin host: a ``pluggy.PluginManager("rewardkit")`` with built-in and third-party plugins.

Built-in plugins are the modules in :data:`DEFAULT_PLUGINS`; third-party plugins are the entry
points of group ``rewardkit`` (``[project.entry-points.rewardkit]`` in their ``pyproject.toml``).
Both go through the same hooks (:mod:`rewardkit.hookspecs`).

Failure is contained: a plugin that fails to import, or whose hook raises, is recorded as broken
with its error and everything else keeps working. Two plugins registering the same name under one
kind make that name *conflicted*: both stay listed, and using the name raises an error naming
both plugins (disable one with ``REWARDKIT_DISABLE_PLUGINS``).

Environment variables:

- ``REWARDKIT_LOAD_PLUGINS=a,b``: load only these third-party distributions (empty: none).
- ``REWARDKIT_DISABLE_PLUGINS=a,b``: block these plugins, built-ins included (by name).
- ``REWARDKIT_TRACE_PLUGINS=1``: print every hook call with its implementations to stderr.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import pluggy

from . import hookspecs
from .components import KINDS, ComponentSpec, describe_factory, first_doc_line
from .errors import PluginError, UnknownComponentError

#: Built-in plugins: one module per hook kind, registered exactly like third-party plugins.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "rewardkit.rewards.plugin",
    "rewardkit.proxies.plugin",
    "rewardkit.solvers.plugin",
    "rewardkit.backbones.plugin",
    "rewardkit.recipes.plugin",
    "rewardkit.data.plugin",
    "rewardkit.world.plugin",
)

ENTRY_POINT_GROUP = "rewardkit"


@dataclass
class PluginInfo:
    """What ``rewardkit plugins`` shows for one plugin."""

    name: str
    builtin: bool
    version: str | None = None
    module: str | None = None
    status: str = "ok"  # ok | broken | disabled
    errors: list[str] = field(default_factory=list)
    components: dict[str, list[str]] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "builtin": self.builtin, "version": self.version,
                "module": self.module, "status": self.status, "errors": list(self.errors),
                "components": {k: list(v) for k, v in self.components.items()},
                "commands": list(self.commands)}


@dataclass
class CommandSpec:
    """A CLI verb registered by a plugin."""

    name: str
    target: Any  # typer.Typer or a function
    help: str | None
    plugin: str


class PluginHost:
    """The loaded plugins and everything they registered. Build with :func:`load_host`."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("rewardkit")
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.components: dict[str, dict[str, ComponentSpec]] = {kind: {} for kind in KINDS}
        self.conflicts: dict[tuple[str, str], list[str]] = {}
        self.commands: dict[str, CommandSpec] = {}
        self.unknown_names: list[str] = []

    # ------------------------------------------------------------ loading

    def add(self, plugin: Any, name: str, *, builtin: bool, version: str | None = None,
            module: str | None = None) -> None:
        """Register an already-imported plugin object (module or namespace) under ``name``."""
        info = self.plugins.setdefault(name, PluginInfo(name, builtin, version, module))
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:  # a malformed hookimpl, a name registered twice
            info.status = "broken"
            info.errors.append(f"could not register: {_describe(exc)}")

    def add_broken(self, name: str, error: str, *, builtin: bool, version: str | None = None,
                   module: str | None = None) -> None:
        info = self.plugins.setdefault(name, PluginInfo(name, builtin, version, module))
        info.status = "broken"
        info.errors.append(error)

    def collect(self) -> None:
        """Call every registration hook, one plugin at a time, so that one failure stays local."""
        for plugin_name, plugin in list(self.pm.list_name_plugin()):
            others = [p for p in self.pm.get_plugins() if p is not plugin]
            for kind, hook_name in KINDS.items():
                self._call(plugin_name, others, hook_name, self._component_register(kind, plugin_name))
            self._call(plugin_name, others, "register_commands", self._command_register(plugin_name))

    def _call(self, plugin_name: str, others: list[Any], hook_name: str,
              register: Callable[..., None]) -> None:
        caller = self.pm.subset_hook_caller(hook_name, remove_plugins=others)
        try:
            caller(register=register)
        except Exception as exc:
            info = self.plugins[plugin_name]
            info.status = "broken"
            info.errors.append(f"{hook_name} raised {_describe(exc)}")

    def _component_register(self, kind: str, plugin_name: str) -> Callable[..., None]:
        def register(factory: Callable[..., Any], name: str | None = None,
                     description: str | None = None) -> None:
            """Register ``factory`` as a component of this kind."""
            component_name = name or getattr(factory, "name", None)
            if not isinstance(component_name, str) or not component_name:
                raise PluginError(f"a {kind} registered by '{plugin_name}' has no name "
                                  "(pass name= or give the factory a 'name' attribute)")
            spec = ComponentSpec(
                kind=kind, name=component_name, factory=factory, plugin=plugin_name,
                description=description or first_doc_line(factory),
                params=describe_factory(factory),
            )
            self.plugins[plugin_name].components.setdefault(kind, []).append(component_name)
            existing = self.components[kind].get(component_name)
            if existing is not None:
                owners = self.conflicts.setdefault((kind, component_name), [existing.plugin])
                owners.append(plugin_name)
                for owner in owners:
                    message = (f"{kind} '{component_name}' is registered by several plugins: "
                               f"{', '.join(repr(o) for o in owners)}")
                    errors = self.plugins[owner].errors
                    errors[:] = [e for e in errors if not e.startswith(f"{kind} '{component_name}'")]
                    errors.append(message)
                return
            self.components[kind][component_name] = spec

        return register

    def _command_register(self, plugin_name: str) -> Callable[..., None]:
        def register(target: Any, name: str, help: str | None = None) -> None:
            """Register a CLI verb: a ``typer.Typer`` group or a plain command function."""
            if name in self.commands:
                raise PluginError(f"command '{name}' is already registered by "
                                  f"'{self.commands[name].plugin}'")
            self.commands[name] = CommandSpec(name, target, help, plugin_name)
            self.plugins[plugin_name].commands.append(name)

        return register

    # ------------------------------------------------------------ lookup

    def get(self, kind: str, name: str) -> ComponentSpec:
        """The component ``name`` of ``kind``; a clear error when unknown or conflicted."""
        if kind not in KINDS:
            raise UnknownComponentError(f"unknown kind '{kind}'; kinds are: {', '.join(KINDS)}")
        owners = self.conflicts.get((kind, name))
        if owners:
            raise PluginError(
                f"{kind} '{name}' is registered by several plugins ({', '.join(owners)}); "
                f"disable all but one with REWARDKIT_DISABLE_PLUGINS"
            )
        try:
            return self.components[kind][name]
        except KeyError:
            known = ", ".join(sorted(self.components[kind])) or "(none)"
            raise UnknownComponentError(
                f"no {kind} named '{name}'; registered {kind}s: {known}") from None

    def list(self, kind: str) -> list[ComponentSpec]:
        if kind not in KINDS:
            raise UnknownComponentError(f"unknown kind '{kind}'; kinds are: {', '.join(KINDS)}")
        return [self.components[kind][n] for n in sorted(self.components[kind])]


# ---------------------------------------------------------------- building the host


def _names_from_env(variable: str) -> set[str] | None:
    value = os.environ.get(variable)
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


def load_host(extra_plugins: Iterable[tuple[str, Any]] = ()) -> PluginHost:
    """Build a fresh host: built-ins, entry points, then ``extra_plugins`` ((name, object) pairs)."""
    host = PluginHost()
    if os.environ.get("REWARDKIT_TRACE_PLUGINS", "").strip() not in ("", "0"):
        _enable_tracing(host.pm)
    allowed = _names_from_env("REWARDKIT_LOAD_PLUGINS")
    disabled = _names_from_env("REWARDKIT_DISABLE_PLUGINS") or set()
    seen: set[str] = set()

    for module_name in DEFAULT_PLUGINS:
        seen.add(module_name)
        if module_name in disabled:
            host.plugins[module_name] = PluginInfo(module_name, True, module=module_name,
                                                   status="disabled")
            continue
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            host.add_broken(module_name, f"import failed: {_describe(exc)}", builtin=True,
                            module=module_name)
            continue
        host.add(module, module_name, builtin=True, module=module_name)

    for ep in sorted(_entry_points(), key=lambda e: (_dist_name(e), e.name)):
        dist = _dist_name(ep)
        version = ep.dist.version if ep.dist is not None else None
        seen.update({dist, ep.name})
        if (allowed is not None and dist not in allowed) or dist in disabled or ep.name in disabled:
            if dist in disabled or ep.name in disabled:
                host.plugins[dist] = PluginInfo(dist, False, version, ep.value, status="disabled")
            continue
        try:
            plugin = ep.load()
        except BaseException as exc:  # SystemExit from a plugin must not end the host either
            if isinstance(exc, KeyboardInterrupt):
                raise
            host.add_broken(dist, f"import of {ep.value} failed: {_describe(exc)}",
                            builtin=False, version=version, module=ep.value)
            continue
        host.add(plugin, dist, builtin=False, version=version, module=ep.value)

    for name, plugin in extra_plugins:
        seen.add(name)
        if name in disabled:
            host.plugins[name] = PluginInfo(name, False, status="disabled")
            continue
        host.add(plugin, name, builtin=False, module=getattr(plugin, "__name__", None))

    host.unknown_names = sorted(((allowed or set()) | disabled) - seen)
    host.collect()
    return host


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def _dist_name(ep: importlib.metadata.EntryPoint) -> str:
    return ep.dist.name if ep.dist is not None else ep.name


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _enable_tracing(pm: pluggy.PluginManager) -> None:
    def before(hook_name: str, hook_impls: list[Any], kwargs: dict[str, Any]) -> None:
        names = ", ".join(impl.plugin_name for impl in hook_impls) or "(none)"
        print(f"[rewardkit] hook {hook_name} -> {names}", file=sys.stderr)

    def after(outcome: Any, hook_name: str, hook_impls: list[Any], kwargs: dict[str, Any]) -> None:
        if outcome.exception is not None:
            print(f"[rewardkit] hook {hook_name} raised {_describe(outcome.exception)}",
                  file=sys.stderr)

    pm.add_hookcall_monitoring(before, after)


_host: PluginHost | None = None
_lock = threading.Lock()


def get_host() -> PluginHost:
    """The process-wide host, built on first use."""
    global _host
    with _lock:
        if _host is None:
            _host = load_host()
        return _host


def reset_host(host: PluginHost | None = None) -> None:
    """Drop the process-wide host (tests; after installing a plugin), or install ``host``."""
    global _host
    with _lock:
        _host = host
