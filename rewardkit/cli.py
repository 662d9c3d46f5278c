"""The terminal face of rewardkit (typer + rich).

Core verbs live here (``plugins``, ``list``, ``describe``, ``run``); plugins add more through the
``register_commands`` hook. Errors print as one red sentence and a non-zero exit code; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import click
import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .components import KINDS
from .config import parse_cli_overrides
from .errors import RewardkitError
from .plugins import PluginHost, get_host

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    name="rewardkit",
    help="Align fast text-to-image generators with reward models (RG-LCD and friends).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"rewardkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                 help="Show the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
) -> None:
    """rewardkit: plugins for reward-guided consistency distillation."""


@app.command("plugins")
def plugins_command(
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List installed plugins, what each registers, and any that are broken or disabled."""
    host = get_host()
    infos = [info.as_dict() for info in host.plugins.values()]
    if as_json:
        typer.echo(json.dumps(infos, indent=2))
        return
    table = Table(title="rewardkit plugins")
    for column in ("plugin", "version", "status", "registers"):
        table.add_column(column)
    for info in infos:
        registers = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in info["components"].items())
        if info["commands"]:
            registers = "; ".join(filter(None, [registers, "commands: " + ", ".join(info["commands"])]))
        status = {"ok": "[green]ok[/]", "disabled": "[yellow]disabled[/]"}.get(
            info["status"], "[red]broken[/]")
        if info["errors"] and info["status"] == "ok":
            status = "[yellow]conflict[/]"
        name = info["name"] + (" (built-in)" if info["builtin"] else "")
        table.add_row(name, info["version"] or "", status, registers)
    console.print(table)
    for info in infos:
        for error in info["errors"]:
            err_console.print(f"[red]{info['name']}[/]: {error}", highlight=False)
    for name in host.unknown_names:
        err_console.print(f"[yellow]unknown plugin name in REWARDKIT_LOAD_PLUGINS/"
                          f"REWARDKIT_DISABLE_PLUGINS: {name}[/]", highlight=False)


@app.command("list")
def list_command(
    kind: Optional[str] = typer.Argument(None, help=f"One of: {', '.join(KINDS)}."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List registered components, with their plugin and description."""
    host = get_host()
    kinds = [kind] if kind else list(KINDS)
    specs = [spec for k in kinds for spec in host.list(k)]
    if as_json:
        typer.echo(json.dumps([{k: v for k, v in s.as_dict().items() if k != "params"}
                               for s in specs], indent=2))
        return
    table = Table(title="rewardkit components")
    for column in ("kind", "name", "plugin", "description"):
        table.add_column(column)
    for spec in specs:
        table.add_row(spec.kind, spec.name, spec.plugin, spec.description)
    console.print(table)


@app.command("describe")
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
    console.print(f"[bold]{spec.kind} {spec.name}[/] (from {spec.plugin})", highlight=False)
    if spec.description:
        console.print(spec.description, highlight=False)
    table = Table()
    for column in ("parameter", "type", "default", "help"):
        table.add_column(column)
    for p in spec.params:
        table.add_row(p.name, p.type, "(required)" if p.required else repr(p.default), p.help)
    console.print(table)


@app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run_command(
    ctx: typer.Context,
    recipe: str = typer.Argument(..., help="A registered recipe (see `rewardkit list recipe`)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c",
                                          help="TOML/YAML/JSON file with the recipe's config."),
) -> None:
    """Run a recipe. Extra `--key value` options override config keys."""
    from .api import recipe as build_recipe

    overrides = parse_cli_overrides(list(ctx.args))
    output = build_recipe(recipe, config, **overrides).run(progress=True)
    console.print(f"[green]done[/]: {output}", highlight=False)


def build_app(host: PluginHost | None = None) -> typer.Typer:
    """The app with every plugin-registered command attached."""
    host = host or get_host()
    for spec in host.commands.values():
        try:
            if isinstance(spec.target, typer.Typer):
                app.add_typer(spec.target, name=spec.name, help=spec.help)
            else:
                app.command(spec.name, help=spec.help)(spec.target)
        except Exception as exc:
            info = host.plugins[spec.plugin]
            info.status = "broken"
            info.errors.append(f"command '{spec.name}' could not be added: {exc}")
    return app


def run(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv``; return the exit code (errors printed, tracebacks only with --debug)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        command = typer.main.get_command(build_app())
        result = command.main(args=argv, prog_name="rewardkit", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        err_console.print("[red]aborted[/]")
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except RewardkitError as exc:
        if debug:
            raise
        err_console.print(f"[red]Error: {exc}[/]", highlight=False)
        return 1
    except KeyboardInterrupt:
        err_console.print("[red]interrupted[/]")
        return 130
    except Exception as exc:
        if debug:
            raise
        err_console.print(f"[red]Error: {type(exc).__name__}: {exc} (run with --debug for the "
                          "traceback)[/]", highlight=False)
        return 1


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())
