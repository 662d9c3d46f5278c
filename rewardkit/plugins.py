"""The plugin host: a ``pluggy.PluginManager("rewardkit")`` with built-in and third-party plugins.

Built-in plugins are the modules in :data:`DEFAULT_PLUGINS`; third-party plugins are the entry
points of group ``rewardkit`` (``[project.entry-points.rewardkit]`` in their ``pyproject.toml``).
Both go through the same hooks (:mod:`rewardkit.hookspecs`).

Failure is contained: a plugin that fails to import, or whose hook raises, is recorded as broken
with its error (what that hook registered is dropped) and everything else keeps working. Two
plugins registering the same name under one kind make that name *conflicted*: both plugins are
listed with status ``conflict``, and using the name raises an error naming both plugins (disable
one with ``REWARDKIT_DISABLE_PLUGINS``). There is no silent override.

Environment variables (comma-separated names; dashes, underscores, dots and case don't matter):

- ``REWARDKIT_LOAD_PLUGINS=a,b``: load only these third-party distributions (empty: none).
  Built-in plugins always load unless disabled.
- ``REWARDKIT_DISABLE_PLUGINS=a,b``: block these plugins, built-ins included (a built-in is named
  by its module, e.g. ``rewardkit.world.plugin``; a third-party plugin by its distribution or
  entry-point name).
- ``REWARDKIT_TRACE_PLUGINS=1``: print every hook call with its implementations to stderr.

Names in the two lists that match no plugin are reported by ``rewardkit plugins``, not fatal.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
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
    "rewardkit.evaluation.plugin",
    "rewardkit.demo.plugin",
    "rewardkit.vote.plugin",
    "rewardkit.world.plugin",
)

ENTRY_POINT_GROUP = "rewardkit"

#: The hooks a plugin may implement (anything else is reported as a probable typo).
HOOK_NAMES: tuple[str, ...] = (*KINDS.values(), "register_commands")

#: Plugin statuses: ``ok``; ``conflict`` (loaded, but shares a component name with another
#: plugin); ``broken`` (failed to import or register, or a hook raised); ``disabled``.
STATUSES: tuple[str, ...] = ("ok", "conflict", "broken", "disabled")


@dataclass
class PluginInfo:
    """What ``rewardkit plugins`` shows for one plugin."""

    name: str
    builtin: bool
    version: str | None = None
    module: str | None = None
    status: str = "ok"  # one of STATUSES
    errors: list[str] = field(default_factory=list)
    components: dict[str, list[str]] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)
    note: str = ""  # why a plugin is disabled, for instance

    def mark_broken(self, error: str) -> None:
        """Record ``error`` and set the status to ``broken``."""
        self.status = "broken"
        self.errors.append(error)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able dict (what ``rewardkit plugins --json`` prints)."""
        return {"name": self.name, "builtin": self.builtin, "version": self.version,
                "module": self.module, "status": self.status, "errors": list(self.errors),
                "components": {k: list(v) for k, v in self.components.items()},
                "commands": list(self.commands), "note": self.note}


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
        if name in self.plugins:
            # Keep the first plugin intact; the newcomer is what cannot load.
            first = self.plugins[name]
            self.plugins[name].errors.append(
                f"another plugin ({module or plugin!r}) also calls itself '{name}' and was not "
                f"loaded; the one loaded is {first.module or name}")
            return
        info = self.plugins[name] = PluginInfo(name, builtin, version, module)
        try:
            hash(plugin)  # pluggy keeps plugins in sets
        except TypeError:
            info.mark_broken(f"a plugin must be a module or a hashable object, got "
                             f"{type(plugin).__name__}")
            return
        if self.pm.is_registered(plugin):
            info.mark_broken(f"the same plugin object is already loaded as "
                             f"'{self.pm.get_name(plugin)}'")
            return
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:  # a malformed hookimpl (wrong argument names), a re-registration
            info.mark_broken(f"could not register: {_describe(exc)}")
            return
        unknown = [attr for attr in dir(plugin) if attr not in HOOK_NAMES
                   and self.pm.parse_hookimpl_opts(plugin, attr) is not None]
        for attr in unknown:
            info.mark_broken(f"implements unknown hook '{attr}'; rewardkit's hooks are: "
                             f"{', '.join(HOOK_NAMES)}")

    def add_broken(self, name: str, error: str, *, builtin: bool, version: str | None = None,
                   module: str | None = None) -> None:
        """Record a plugin that could not even be imported."""
        info = self.plugins.setdefault(name, PluginInfo(name, builtin, version, module))
        info.mark_broken(error)

    def add_disabled(self, name: str, note: str, *, builtin: bool, version: str | None = None,
                     module: str | None = None) -> None:
        """Record a plugin that was deliberately not loaded, and why."""
        self.plugins[name] = PluginInfo(name, builtin, version, module, status="disabled",
                                        note=note)

    def collect(self) -> None:
        """Call every registration hook, one plugin at a time, so that one failure stays local.

        What a hook registers is committed only when the hook returns: a hook that raises
        half-way contributes nothing, and its plugin is marked broken with the error.
        """
        for plugin_name, plugin in list(self.pm.list_name_plugin()):
            implemented = {caller.name for caller in self.pm.get_hookcallers(plugin) or ()}
            others = [p for p in self.pm.get_plugins() if p is not plugin]
            for kind, hook_name in KINDS.items():
                if hook_name in implemented:
                    pending: list[ComponentSpec] = []
                    if self._call(plugin_name, others, hook_name,
                                  self._component_register(kind, plugin_name, pending)):
                        for spec in pending:
                            self._commit_component(spec)
            if "register_commands" in implemented:
                commands: list[CommandSpec] = []
                if self._call(plugin_name, others, "register_commands",
                              self._command_register(plugin_name, commands)):
                    for command in commands:
                        self._commit_command(command)

    def _call(self, plugin_name: str, others: list[Any], hook_name: str,
              register: Callable[..., None]) -> bool:
        caller = self.pm.subset_hook_caller(hook_name, remove_plugins=others)
        try:
            caller(register=register)
        except Exception as exc:
            self.plugins[plugin_name].mark_broken(f"{hook_name} raised {_describe(exc)}")
            return False
        return True

    def _component_register(self, kind: str, plugin_name: str,
                            pending: list[ComponentSpec]) -> Callable[..., None]:
        def register(factory: Callable[..., Any], name: str | None = None,
                     description: str | None = None) -> None:
            """Register ``factory`` as a component of this kind."""
            component_name = name or getattr(factory, "name", None)
            if not callable(factory):
                raise PluginError(f"a {kind} registered by '{plugin_name}' is not callable: "
                                  f"{factory!r}")
            if not isinstance(component_name, str) or not component_name:
                raise PluginError(f"a {kind} registered by '{plugin_name}' has no name "
                                  "(pass name= or give the factory a 'name' attribute)")
            pending.append(ComponentSpec(
                kind=kind, name=component_name, factory=factory, plugin=plugin_name,
                description=description or first_doc_line(factory),
                params=describe_factory(factory),
            ))

        return register

    def _commit_component(self, spec: ComponentSpec) -> None:
        kind, name, plugin_name = spec.kind, spec.name, spec.plugin
        self.plugins[plugin_name].components.setdefault(kind, []).append(name)
        existing = self.components[kind].get(name)
        if existing is None:
            self.components[kind][name] = spec
            return
        owners = self.conflicts.setdefault((kind, name), [existing.plugin])
        owners.append(plugin_name)
        message = (f"{kind} '{name}' is registered by several plugins: "
                   f"{', '.join(repr(o) for o in owners)}")
        for owner in dict.fromkeys(owners):
            info = self.plugins[owner]
            info.errors[:] = [e for e in info.errors if not e.startswith(f"{kind} '{name}' ")]
            info.errors.append(message)
            if info.status == "ok":
                info.status = "conflict"

    def _command_register(self, plugin_name: str,
                          pending: list[CommandSpec]) -> Callable[..., None]:
        def register(target: Any, name: str, help: str | None = None) -> None:
            """Register a CLI verb: a ``typer.Typer`` group or a plain command function."""
            if not isinstance(name, str) or not name:
                raise PluginError(f"a command registered by '{plugin_name}' has no name")
            pending.append(CommandSpec(name, target, help, plugin_name))

        return register

    def _commit_command(self, command: CommandSpec) -> None:
        existing = self.commands.get(command.name)
        if existing is not None:
            self.plugins[command.plugin].mark_broken(
                f"command '{command.name}' is already registered by '{existing.plugin}'")
            return
        self.commands[command.name] = command
        self.plugins[command.plugin].commands.append(command.name)

    # ------------------------------------------------------------ lookup

    def get(self, kind: str, name: str) -> ComponentSpec:
        """The component ``name`` of ``kind``; a clear error when unknown or conflicted."""
        _check_kind(kind)
        owners = self.conflicts.get((kind, name))
        if owners:
            raise PluginError(
                f"{kind} '{name}' is registered by several plugins ({', '.join(owners)}); "
                f"disable all but one with REWARDKIT_DISABLE_PLUGINS")
        try:
            return self.components[kind][name]
        except KeyError:
            known = ", ".join(sorted(self.components[kind])) or "(none)"
            raise UnknownComponentError(
                f"no {kind} named '{name}'; registered {kind}s: {known}") from None

    def list(self, kind: str) -> list[ComponentSpec]:
        """The components of ``kind``, sorted by name (a conflicted name shows its first owner)."""
        _check_kind(kind)
        return [self.components[kind][n] for n in sorted(self.components[kind])]

    def owners(self, kind: str, name: str) -> list[str]:
        """The plugins that registered ``name`` under ``kind`` (several means a conflict)."""
        if (kind, name) in self.conflicts:
            return list(self.conflicts[(kind, name)])
        spec = self.components.get(kind, {}).get(name)
        return [spec.plugin] if spec is not None else []


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise UnknownComponentError(f"unknown kind '{kind}'; kinds are: {', '.join(KINDS)}")


# ---------------------------------------------------------------- building the host


def canonical_name(name: str) -> str:
    """Normalise a plugin name like PEP 503 does (``Foo_Bar.baz`` -> ``foo-bar-baz``)."""
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def _names_from_env(variable: str) -> list[str] | None:
    value = os.environ.get(variable)
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


class _NameFilter:
    """Matches plugin names against the allow-list and deny-list; remembers which names matched."""

    def __init__(self, allowed: list[str] | None, disabled: list[str]) -> None:
        self.allowed = None if allowed is None else {canonical_name(n): n for n in allowed}
        self.disabled = {canonical_name(n): n for n in disabled}
        self.matched: set[str] = set()

    def _hit(self, table: dict[str, str], names: Iterable[str]) -> bool:
        hits = {canonical_name(n) for n in names} & set(table)
        self.matched |= hits
        return bool(hits)

    def is_disabled(self, *names: str) -> bool:
        return self._hit(self.disabled, names)

    def is_allowed(self, *names: str) -> bool:
        return self.allowed is None or self._hit(self.allowed, names)

    def unknown(self) -> list[str]:
        everything = {**(self.allowed or {}), **self.disabled}
        return sorted(original for key, original in everything.items() if key not in self.matched)


def load_host(extra_plugins: Iterable[tuple[str, Any]] = ()) -> PluginHost:
    """Build a fresh host: built-ins, entry points, then ``extra_plugins`` ((name, object) pairs).

    ``extra_plugins`` are in-process plugins (a module, class or namespace with ``@hookimpl``
    functions), e.g. from tests or scripts; they obey ``REWARDKIT_DISABLE_PLUGINS`` too.
    """
    host = PluginHost()
    if os.environ.get("REWARDKIT_TRACE_PLUGINS", "").strip().lower() not in ("", "0", "false",
                                                                                "no", "off"):
        _enable_tracing(host.pm)
    names = _NameFilter(_names_from_env("REWARDKIT_LOAD_PLUGINS"),
                        _names_from_env("REWARDKIT_DISABLE_PLUGINS") or [])
    own_version = _rewardkit_version()

    for module_name in DEFAULT_PLUGINS:
        if names.is_disabled(module_name):
            host.add_disabled(module_name, "in REWARDKIT_DISABLE_PLUGINS", builtin=True,
                              version=own_version, module=module_name)
            continue
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            host.add_broken(module_name, f"import failed: {_describe(exc)}", builtin=True,
                            version=own_version, module=module_name)
            continue
        host.add(module, module_name, builtin=True, version=own_version, module=module_name)

    for dist, entry_points in _entry_points_by_distribution():
        for ep in entry_points:
            name = dist if len(entry_points) == 1 else f"{dist}:{ep.name}"
            version = ep.dist.version if ep.dist is not None else None
            if names.is_disabled(dist, ep.name, name):
                host.add_disabled(name, "in REWARDKIT_DISABLE_PLUGINS", builtin=False,
                                  version=version, module=ep.value)
                continue
            if not names.is_allowed(dist, ep.name, name):
                host.add_disabled(name, "not in REWARDKIT_LOAD_PLUGINS", builtin=False,
                                  version=version, module=ep.value)
                continue
            try:
                plugin = ep.load()
            except BaseException as exc:  # SystemExit from a plugin must not end the host either
                if isinstance(exc, KeyboardInterrupt):
                    raise
                host.add_broken(name, f"import of {ep.value} failed: {_describe(exc)}",
                                builtin=False, version=version, module=ep.value)
                continue
            host.add(plugin, name, builtin=False, version=version, module=ep.value)

    for name, plugin in extra_plugins:
        module = getattr(plugin, "__name__", None) or type(plugin).__name__
        if names.is_disabled(name):
            host.add_disabled(name, "in REWARDKIT_DISABLE_PLUGINS", builtin=False, module=module)
            continue
        host.add(plugin, name, builtin=False, module=module)

    host.unknown_names = names.unknown()
    host.collect()
    return host


def _entry_points_by_distribution() -> list[tuple[str, list[importlib.metadata.EntryPoint]]]:
    """Entry points of group ``rewardkit``, grouped by distribution, in a deterministic order."""
    grouped: dict[str, list[importlib.metadata.EntryPoint]] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        grouped.setdefault(_dist_name(ep), []).append(ep)
    return [(dist, sorted(eps, key=lambda e: e.name)) for dist, eps in sorted(grouped.items())]


def _dist_name(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None else ep.name


def _rewardkit_version() -> str | None:
    try:
        return importlib.metadata.version("rewardkit")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - source tree
        return None


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
