"""The terminal face of rewardkit (typer + rich).

Core verbs live here (``plugins``, ``list``, ``describe``, ``run``); plugins add more through the
``register_commands`` hook. Errors print as one red sentence and a non-zero exit code; ``--debug``
shows the traceback instead.

Exit codes: 0 success; 1 an error (unknown component, bad config, a recipe failing); 2 a usage
error (unknown command or option, missing argument); 130 interrupted.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__
from .components import KINDS
from .config import normalise_key, parse_cli_overrides
from .errors import RewardkitError
from .plugins import PluginHost, get_host

#: Consoles for normal output and for errors; rebuilt by :func:`run` so that each invocation
#: honours the current ``sys.stdout`` and ``COLUMNS``.
console = Console()
err_console = Console(stderr=True)

#: The verbs rewardkit itself defines; a plugin cannot replace them.
CORE_COMMANDS: tuple[str, ...] = ("plugins", "list", "describe", "run")

_STATUS_STYLE = {"ok": "green", "conflict": "yellow", "disabled": "yellow", "broken": "red"}

#: Library messages a user can do nothing about, dropped by the command line (not by ``import
#: rewardkit``, which leaves the libraries' logging alone): (logger name, text of the message).
#: ``--debug`` shows them.
KNOWN_LIBRARY_NOISE: tuple[tuple[str, str], ...] = (
    # transformers >= 5 without torchvision: diffusers' pipeline modules import
    # CLIPImageProcessor and SiglipImageProcessor, which fall back to their PIL versions with a
    # warning each. rewardkit's RMs preprocess tensors themselves, so nothing is lost.
    ("transformers.utils.import_utils", "requires torchvision (not installed); falling back to"),
)


def _click_exceptions() -> tuple[Any, Any, Any]:
    """``(ClickException, Exit, Abort)`` classes: typer may vendor click, or use the real one."""
    click_errors, exits, aborts = [], [typer.Exit], [typer.Abort]
    modules = []
    try:
        from typer import _click  # typer >= 0.2x ships its own copy of click

        modules.append(_click.exceptions)
    except ImportError:
        pass
    try:
        import click.exceptions

        modules.append(click.exceptions)
    except ImportError:  # pragma: no cover - click is optional with a vendoring typer
        pass
    for module in modules:  # each copy names these differently; take what exists
        for found, attribute in ((click_errors, "ClickException"), (exits, "Exit"),
                                 (aborts, "Abort")):
            if hasattr(module, attribute):
                found.append(getattr(module, attribute))
    return tuple(click_errors), tuple(exits), tuple(aborts)


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"rewardkit {__version__}", highlight=False)
        raise typer.Exit()


def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                 help="Show the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
) -> None:
    """rewardkit: plugins for reward-guided consistency distillation."""


def plugins_command(
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List installed plugins, what each registers, and any that are broken or disabled."""
    host = get_host()
    infos = [info.as_dict() for info in host.plugins.values()]
    for name in host.unknown_names:  # on stderr, so --json output stays parseable
        err_console.print(f"[yellow]unknown plugin name in REWARDKIT_LOAD_PLUGINS/"
                          f"REWARDKIT_DISABLE_PLUGINS: {escape(name)}[/]", highlight=False,
                          soft_wrap=True)
    if as_json:
        typer.echo(json.dumps(infos, indent=2))
        return
    table = Table(title="rewardkit plugins")
    table.add_column("plugin", overflow="fold")
    table.add_column("version", overflow="fold")
    table.add_column("status")
    table.add_column("registers", overflow="fold")
    table.add_column("errors / notes", overflow="fold")
    for info in infos:
        registers = [f"{kind}: {', '.join(names)}" for kind, names in info["components"].items()]
        if info["commands"]:
            registers.append("commands: " + ", ".join(info["commands"]))
        style = _STATUS_STYLE.get(info["status"], "red")
        name = info["name"] + (" (built-in)" if info["builtin"] else "")
        remarks = info["errors"] + ([info["note"]] if info["note"] else [])
        table.add_row(escape(name), escape(info["version"] or ""),
                      f"[{style}]{info['status']}[/]", escape("; ".join(registers)),
                      escape("; ".join(remarks)))
    console.print(table)


def list_command(
    kind: Optional[str] = typer.Argument(None, help=f"One of: {', '.join(KINDS)}."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List registered components, with their plugin and description."""
    host = get_host()
    kinds = [kind] if kind else list(KINDS)
    specs = [spec for k in kinds for spec in host.list(k)]
    if as_json:
        rows = []
        for spec in specs:
            row = {k: v for k, v in spec.as_dict().items() if k != "params"}
            row["plugins"] = host.owners(spec.kind, spec.name)
            rows.append(row)
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="rewardkit components")
    for column in ("kind", "name", "plugin", "description"):
        table.add_column(column, overflow="fold")
    for spec in specs:
        owners = host.owners(spec.kind, spec.name)
        plugin = escape(", ".join(owners))
        if len(owners) > 1:
            plugin += " [yellow](conflict)[/]"
        table.add_row(spec.kind, escape(spec.name), plugin, escape(spec.description))
    console.print(table)


def describe_command(
    kind: str = typer.Argument(..., help=f"One of: {', '.join(KINDS)}."),
    name: str = typer.Argument(..., help="The component's registered name."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show a component's parameters and their defaults."""
    spec = get_host().get(kind, name)
    if as_json:
        typer.echo(json.dumps(spec.as_dict(), indent=2, default=repr))
        return
    console.print(f"[bold]{spec.kind} {escape(spec.name)}[/] (from {escape(spec.plugin)})",
                  highlight=False)
    if spec.description:
        console.print(escape(spec.description), highlight=False)
    console.print(parameter_table(spec))


def parameter_table(spec: Any, title: str | None = None) -> Table:
    """A component's parameters: name, type, default and help (``describe`` and ``run --help``)."""
    table = Table(title=title)
    for column in ("parameter", "type", "default", "help"):
        table.add_column(column)
    params = list(spec.params)
    groups = list(dict.fromkeys(p.group for p in params))
    if groups != [""]:  # keys by topic, in the order the config declares its topics
        order = {g: i for i, g in enumerate(getattr(getattr(spec.factory, "Config", None),
                                                    "KEY_GROUPS", {}))}
        params.sort(key=lambda p: order.get(p.group, len(order)))
    current = None
    for p in params:
        if groups != [""] and p.group != current:
            current = p.group
            if table.row_count:
                table.add_section()
            table.add_row(f"[bold]{escape(current or 'Other')}[/]", "", "", "")
        table.add_row(p.name, escape(p.type), "(required)" if p.required else escape(repr(p.default)),
                      escape(p.help))
    return table


def run_command(
    ctx: typer.Context,
    recipe: Optional[str] = typer.Argument(
        None, help="A registered recipe (see `rewardkit list recipe`)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c",
                                          help="TOML/YAML/JSON file with the recipe's config."),
    show_help: bool = typer.Option(False, "--help", "-h", is_eager=True,
                                   help="Show this message; after a recipe, its config keys."),
    plan: bool = typer.Option(False, "--plan", help="Print the memory plan per GPU of this "
                              "configuration (lcd, rg-lcd; no weights load) and exit."),
    gpu_memory: Optional[str] = typer.Option(
        None, "--gpu_memory", "--gpu-memory",
        help="With --plan: the GPU's memory (80GiB, 80GB, 24G): does it fit, and what would."),
    num_processes: Optional[int] = typer.Option(
        None, "--num_processes", "--num-processes",
        help="With --plan: processes (GPUs) of the launch (default: WORLD_SIZE, else 1)."),
    zero_stage: Optional[int] = typer.Option(
        None, "--zero_stage", "--zero-stage",
        help="With --plan: DeepSpeed ZeRO stage of the launch (default: what accelerate's "
             "environment asks for, else no DeepSpeed)."),
) -> None:
    """Run a recipe. Extra `--key value` options override config keys
    (`rewardkit run RECIPE --help` lists them)."""
    from .api import recipe as build_recipe

    if show_help or recipe is None:
        if recipe is None:
            typer.echo(ctx.get_help())
            raise typer.Exit(0 if show_help else 2)
        spec = get_host().get("recipe", recipe)
        console.print(f"[bold]Usage:[/] rewardkit run {escape(recipe)} [--config FILE] "
                      "[--KEY VALUE ...]", highlight=False)
        if spec.description:
            console.print(escape(spec.description), highlight=False)
        console.print("Every key below can be set in the config file or as --KEY VALUE "
                      "(dashes and underscores alike); the command line wins.", highlight=False)
        console.print(parameter_table(spec, title=f"recipe {recipe}: config keys"))
        raise typer.Exit(0)
    overrides = parse_cli_overrides(list(ctx.args))
    if plan:
        print_plan(recipe, config, overrides, gpu_memory, num_processes, zero_stage)
        return
    if gpu_memory is not None or num_processes is not None or zero_stage is not None:
        raise typer.BadParameter("--gpu_memory, --num_processes and --zero_stage go with --plan")
    built = build_recipe(recipe, config, **overrides)
    try:
        output = built.run(progress=True)
    except KeyboardInterrupt:
        command = ["run", recipe, *(["--config", str(config)] if config else []), *ctx.args]
        err_console.print(interrupted_message(command, built.config), highlight=False)
        raise typer.Exit(130)
    console.print(f"[green]done[/]: {escape(str(output))}", highlight=False)


def print_plan(recipe: str, config: Path | None, overrides: dict[str, Any],
               gpu_memory: str | None, num_processes: int | None,
               zero_stage: int | None) -> None:
    """``run --plan``: the memory plan per GPU (:mod:`rewardkit.plan`), with what would make it
    fit ``gpu_memory``; config checks that fail are said beside it, not raised."""
    import os

    from .plan import Launch, load_for_plan, parse_memory, plan_config, plan_table, suggestions
    from .plan.table import Profiles
    from .training.runtime import requested_zero_stage

    memory = parse_memory(gpu_memory) if gpu_memory is not None else None
    loaded = load_for_plan(recipe, config, overrides)
    refusal = None
    try:
        loaded.validate()
    except RewardkitError as error:  # e.g. a reward plugin installed only on the GPU machine
        refusal = str(error)
    processes = num_processes or int(os.environ.get("WORLD_SIZE", "1") or 1)
    stage = zero_stage if zero_stage is not None else requested_zero_stage()
    profiles = Profiles()
    result = plan_config(loaded, Launch(num_processes=processes, zero_stage=stage), profiles)
    if memory is not None:
        suggestions(result, memory, profiles)
    console.print(plan_table(result, memory))
    for note in result.notes:
        console.print(f"note: {escape(note)}", highlight=False, soft_wrap=True)
    if profiles.measured:
        console.print(f"note: measured {len(profiles.measured)} activation profile(s) not in the "
                      f"shipped table ({sum(profiles.measured.values()):.1f} s)", highlight=False)
    if refusal:
        console.print(f"[yellow]note: the run itself would refuse this config here: "
                      f"{escape(refusal)}[/]", highlight=False, soft_wrap=True)


def interrupted_message(command: list[str], config: Any) -> str:
    """What a Ctrl-C leaves behind and how to continue: the newest checkpoint and the resume
    command (``command``: the interrupted one, without ``rewardkit``), or that none was written."""
    from .training.checkpoint import list_checkpoints

    output_dir = getattr(config, "output_dir", None)
    found = list_checkpoints(output_dir) if output_dir else []
    if not found:
        every = getattr(config, "checkpointing_steps", None)
        return (f"[red]interrupted[/]: no checkpoint was written yet"
                f"{f' (checkpointing_steps={every})' if every is not None else ''}; running the "
                "same command again with --overwrite_output_dir starts over")
    step, newest = found[-1]
    from .secrets import redact_command

    command = redact_command(command)  # printed: a reward server's token stays out of the log
    kept, i = list(command[:2]), 2  # "run", recipe; then options as parse_cli_overrides reads them
    while i < len(command):
        arg = command[i]
        has_value = "=" not in arg and i + 1 < len(command) and not command[i + 1].startswith("--")
        key = normalise_key(arg[2:].partition("=")[0]) if arg.startswith("--") else ""
        width = 2 if has_value else 1
        if key not in ("resume_from_checkpoint", "overwrite_output_dir"):
            kept.extend(command[i:i + width])
        i += width
    args = " ".join(kept)
    return (f"[red]interrupted[/]: the newest checkpoint is {escape(str(newest))} (step {step}); "
            f"continue with: rewardkit {escape(args)} --resume_from_checkpoint latest")


def _core_app() -> typer.Typer:
    """A Typer app with only rewardkit's own verbs."""
    core = typer.Typer(
        name="rewardkit",
        help="Align fast text-to-image generators with reward models (RG-LCD and friends).",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    core.callback()(_root)
    core.command("plugins")(plugins_command)
    core.command("list")(list_command)
    core.command("describe")(describe_command)
    core.command("run", add_help_option=False,
                 context_settings={"allow_extra_args": True,
                                   "ignore_unknown_options": True})(run_command)
    return core


#: The core app (no plugin verbs); :func:`build_app` adds those to a fresh copy.
app = _core_app()


def _attach(target_app: typer.Typer, name: str, target: Any, help: str | None) -> None:
    if isinstance(target, typer.Typer):
        target_app.add_typer(target, name=name, help=help)
    elif callable(target):
        target_app.command(name, help=help)(target)
    else:
        raise TypeError(f"expected a typer.Typer or a function, got {type(target).__name__}")


def build_app(host: PluginHost | None = None) -> typer.Typer:
    """A fresh app: the core verbs plus every plugin-registered command that builds cleanly.

    A plugin command that shadows a core verb, or that typer cannot turn into a command, marks
    its plugin broken and is left out; the rest of the CLI keeps working.
    """
    host = host or get_host()
    full = _core_app()
    for spec in host.commands.values():
        info = host.plugins[spec.plugin]
        if spec.name in CORE_COMMANDS:
            if not any(f"command '{spec.name}'" in e for e in info.errors):
                info.mark_broken(f"command '{spec.name}' would replace a core rewardkit command")
            continue
        try:
            probe = typer.Typer(add_completion=False)
            probe.callback()(lambda: None)  # keeps a lone command a sub-command, as in `full`
            _attach(probe, spec.name, spec.target, spec.help)
            typer.main.get_command(probe)
        except Exception as exc:
            if not any(f"command '{spec.name}'" in e for e in info.errors):
                info.mark_broken(f"command '{spec.name}' could not be added: "
                                 f"{type(exc).__name__}: {exc}")
            continue
        _attach(full, spec.name, spec.target, spec.help)
    return full


def run(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv``; return the exit code (errors printed, tracebacks only with --debug)."""
    global console, err_console
    console, err_console = _make_console(), _make_console(stderr=True)
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    click_errors, exits, aborts = _click_exceptions()
    try:
        # `--version` needs no plugins: skip loading them (it imports torch and friends)
        wants_version = any(arg == "--version" for arg in argv[:2])
        if not wants_version:
            _quiet_library_progress_bars(sys.stderr)  # before torch, which imports tqdm
            if not debug:
                quiet_known_library_noise()
            from .training.runtime import quiet_deepspeed_autodetect

            quiet_deepspeed_autodetect()
        command = typer.main.get_command(_core_app() if wants_version else build_app())
        result = command.main(args=argv, prog_name="rewardkit", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except exits as exc:
        return int(getattr(exc, "exit_code", 0) or 0)
    except aborts:
        err_console.print("[red]aborted[/]")
        return 130
    except click_errors as exc:
        exc.show()
        return int(exc.exit_code)
    except RewardkitError as exc:
        if debug:
            raise
        _print_error(str(exc))
        return 1
    except KeyboardInterrupt:
        err_console.print("[red]interrupted[/]")
        return 130
    except Exception as exc:
        if debug:
            raise
        _print_error(f"{type(exc).__name__}: {exc} (run with --debug for the traceback)")
        return 1


def _make_console(stderr: bool = False) -> Console:
    """A console; when writing to a file or pipe (not a terminal) and ``COLUMNS`` is unset,
    tables get room to stay unwrapped instead of rich's default 80 columns."""
    import os

    stream = sys.stderr if stderr else sys.stdout
    wide = not os.environ.get("COLUMNS") and not getattr(stream, "isatty", lambda: False)()
    return Console(stderr=stderr, width=160 if wide else None)


def _quiet_library_progress_bars(stream: Any) -> None:
    """Turn off tqdm's bars (diffusers' and transformers' model loading) when ``stream`` is not
    a terminal, by ``TQDM_DISABLE=1``.

    In a log file each bar is a line of carriage returns between rewardkit's own plain progress
    lines, which say the same thing. tqdm reads the variable once, when it is first imported, so
    this must run before anything imports it. A user's own ``TQDM_DISABLE`` wins.
    """
    import os

    if "TQDM_DISABLE" not in os.environ and "tqdm" not in sys.modules \
            and not getattr(stream, "isatty", lambda: False)():
        os.environ["TQDM_DISABLE"] = "1"


class _DropMessage(logging.Filter):
    """Drops the records of one logger whose message contains ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def quiet_known_library_noise() -> None:
    """Filter :data:`KNOWN_LIBRARY_NOISE` out of the libraries' loggers (idempotent). Only the
    command line calls it; it needs none of the libraries imported (a logger is a name)."""
    for name, text in KNOWN_LIBRARY_NOISE:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessage) and f.text == text for f in logger.filters):
            logger.addFilter(_DropMessage(text))


def _print_error(message: str) -> None:
    err_console.print(f"[red]Error: {escape(message)}[/]", highlight=False, soft_wrap=True)


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())
