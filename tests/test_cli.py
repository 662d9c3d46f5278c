"""The command line: exit codes, messages, core verbs and plugin-provided verbs.

Most tests call :func:`rewardkit.cli.run` in-process with a host holding in-file plugins; a few
run the installed ``rewardkit`` script end to end.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import pytest
import typer

import rewardkit
from rewardkit import cli, hookimpl
from rewardkit.errors import ConfigError
from rewardkit.plugins import load_host, reset_host


@dataclasses.dataclass
class EchoConfig:
    output_dir: str = "out"
    steps: int = 1
    lora: bool = False
    fail_with: str = ""  # "", "config", "crash", "interrupt"
    checkpointing_steps: int = 2
    overwrite_output_dir: bool = False

    def validate(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"'steps' must be at least 1, got {self.steps}")


class EchoRecipe:
    """Writes its config to output_dir/config.json."""

    name = "echo"
    Config = EchoConfig

    def __init__(self, config: EchoConfig):
        self.config = config

    def run(self, progress: bool = True) -> Path:
        if self.config.fail_with == "crash":
            raise RuntimeError("the recipe crashed")
        if self.config.fail_with == "interrupt":  # Ctrl-C after writing checkpoint-7
            (Path(self.config.output_dir) / "checkpoint-7").mkdir(parents=True)
            (Path(self.config.output_dir) / "checkpoint-7" / "trainer_state.json").write_text(
                '{"global_step": 7}')
            raise KeyboardInterrupt
        out = Path(self.config.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(self.config)))
        return out


greet_app = typer.Typer(help="Greetings.")


@greet_app.command("hello")
def greet_hello(name: str = "you") -> None:
    """Say hello."""
    typer.echo(f"hello {name}")


@greet_app.command("bye")
def greet_bye() -> None:
    """Say bye."""
    typer.echo("bye")


class CliPlugin:
    """A recipe, a command group and a single command."""

    @hookimpl
    def register_recipes(self, register):
        register(EchoRecipe)

    @hookimpl
    def register_commands(self, register):
        register(greet_app, name="greet", help="Greetings from a plugin.")

        def shout(word: str) -> None:
            """Print WORD in capitals."""
            typer.echo(word.upper())

        register(shout, name="shout")


class BadCommands:
    """Commands that must not break the CLI."""

    @hookimpl
    def register_commands(self, register):
        register(lambda: None, name="list", help="tries to replace a core verb")


class UnbuildableCommand:
    """Registers something that is neither a typer app nor a function."""

    @hookimpl
    def register_commands(self, register):
        register(42, name="weird")


@pytest.fixture
def cli_host(fresh_host, monkeypatch):
    """A host with the CLI test plugins installed as the process-wide host; wide output."""
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.setenv("REWARDKIT_LOAD_PLUGINS", "")  # no third-party plugins from the environment
    host = load_host(extra_plugins=[("cli-plugin", CliPlugin())])
    reset_host(host)
    return host


def test_version(capsys):
    assert cli.run(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"rewardkit {rewardkit.__version__}"


def test_no_arguments_shows_help(cli_host, capsys):
    assert cli.run([]) == 2
    out = capsys.readouterr()
    assert "Usage" in out.out + out.err and "plugins" in out.out + out.err


def test_unknown_command_is_a_usage_error(cli_host, capsys):
    assert cli.run(["frobnicate"]) == 2
    assert "No such command 'frobnicate'" in capsys.readouterr().err


def test_list_with_a_bad_kind_is_one_red_sentence(cli_host, capsys, monkeypatch):
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert cli.run(["list", "rewards"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert "\x1b[31m" in err  # red
    assert "Error: unknown kind 'rewards'; kinds are: reward, proxy, solver, backbone, recipe" in err


def test_list_all_and_by_kind(cli_host, capsys):
    assert cli.run(["list"]) == 0
    out = capsys.readouterr().out
    assert "echo" in out and "cli-plugin" in out and "Writes its config to output_dir/config.json." in out
    assert cli.run(["list", "recipe", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"kind": "recipe", "name": "echo", "plugin": "cli-plugin", "plugins": ["cli-plugin"],
            "description": "Writes its config to output_dir/config.json."} in rows
    assert all(row["kind"] == "recipe" for row in rows)


def test_describe_shows_parameters_and_defaults(cli_host, capsys):
    assert cli.run(["describe", "recipe", "echo"]) == 0
    out = capsys.readouterr().out
    assert "recipe echo (from cli-plugin)" in out
    for fragment in ("output_dir", "'out'", "steps", "lora", "False"):
        assert fragment in out
    assert cli.run(["describe", "recipe", "echo", "--json"]) == 0
    params = {p["name"]: p for p in json.loads(capsys.readouterr().out)["params"]}
    assert params["steps"] == {"name": "steps", "type": "int", "default": 1, "required": False,
                               "help": ""}


def test_describe_unknown_component(cli_host, capsys):
    assert cli.run(["describe", "reward", "no-such-rm"]) == 1
    assert "Error: no reward named 'no-such-rm'; registered rewards:" in capsys.readouterr().err


def test_run_unknown_recipe_lists_the_known_ones(cli_host, capsys):
    assert cli.run(["run", "rg-lcdd"]) == 1
    err = capsys.readouterr().err
    assert "Error: no recipe named 'rg-lcdd'; registered recipes: " in err and "echo" in err
    assert "Traceback" not in err


def test_run_with_config_file_and_overrides(cli_host, capsys, tmp_path):
    config = tmp_path / "echo.toml"
    config.write_text(f'output_dir = "{tmp_path / "from-file"}"\nsteps = 2\n')
    out_dir = tmp_path / "from-cli"
    code = cli.run(["run", "echo", "--config", str(config), "--steps", "5", "--lora",
                    f"--output-dir={out_dir}"])
    assert code == 0, capsys.readouterr().err
    assert json.loads((out_dir / "config.json").read_text()) == {
        "output_dir": str(out_dir), "steps": 5, "lora": True, "fail_with": "",
        "checkpointing_steps": 2, "overwrite_output_dir": False}
    assert f"done: {out_dir}" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--stpes", "3"], "unknown config key 'stpes'; did you mean 'steps'?"),
    (["--steps", "three"], "'steps' must be an integer, got 'three'"),
    (["--steps", "0"], "'steps' must be at least 1, got 0"),
    (["--lora", "maybe"], "'lora' must be true or false, got 'maybe'"),
    (["stray"], "unexpected argument 'stray'"),
    (["--config", "missing.toml"], "config file 'missing.toml' does not exist"),
])
def test_run_config_errors_are_one_sentence(cli_host, capsys, args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.run(["run", "echo", *args]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: ") and message in err and "\n" not in err


def test_ctrl_c_names_the_newest_checkpoint_and_the_resume_command(cli_host, capsys, tmp_path):
    out = tmp_path / "run"
    code = cli.run(["run", "echo", "--output-dir", str(out), "--fail-with", "interrupt",
                    "--overwrite_output_dir", "--steps", "3"])
    assert code == 130
    err = " ".join(capsys.readouterr().err.split())
    assert "interrupted" in err and "checkpoint-7 (step 7)" in err
    assert (f"continue with: rewardkit run echo --output-dir {out} --fail-with interrupt "
            f"--steps 3 --resume_from_checkpoint latest") in err


def test_ctrl_c_before_any_checkpoint_says_so():
    from types import SimpleNamespace

    message = cli.interrupted_message(["run", "echo"], SimpleNamespace(
        output_dir="/nonexistent", checkpointing_steps=500))
    assert "no checkpoint was written yet (checkpointing_steps=500)" in message


def test_unexpected_errors_hide_the_traceback_unless_debug(cli_host, capsys, tmp_path):
    args = ["run", "echo", "--fail-with", "crash", "--output-dir", str(tmp_path)]
    assert cli.run(args) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("Error: RuntimeError: the recipe crashed (run with --debug for the traceback)")
    with pytest.raises(RuntimeError, match="the recipe crashed"):
        cli.run(["--debug", *args])
    with pytest.raises(ConfigError, match="did you mean 'steps'"):
        cli.run(["--debug", "run", "echo", "--stpes", "1"])


def test_plugin_commands_group_and_single(cli_host, capsys):
    assert cli.run(["greet", "hello", "--name", "ada"]) == 0
    assert capsys.readouterr().out == "hello ada\n"
    assert cli.run(["greet", "bye"]) == 0
    assert capsys.readouterr().out == "bye\n"
    assert cli.run(["shout", "quiet"]) == 0
    assert capsys.readouterr().out == "QUIET\n"
    assert cli.run(["--help"]) == 0
    help_text = capsys.readouterr().out
    assert "greet" in help_text and "Greetings from a plugin." in help_text


def test_plugin_commands_come_from_the_current_host_only(cli_host, capsys):
    assert cli.run(["shout", "a"]) == 0
    reset_host(load_host())  # a host without the CLI plugin
    assert cli.run(["shout", "a"]) == 2
    assert "No such command 'shout'" in capsys.readouterr().err


def test_bad_plugin_commands_are_reported_and_the_rest_works(fresh_host, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.setenv("REWARDKIT_LOAD_PLUGINS", "")
    reset_host(load_host(extra_plugins=[("cli-plugin", CliPlugin()), ("bad", BadCommands()),
                                        ("unbuildable", UnbuildableCommand())]))
    assert cli.run(["list", "recipe", "--json"]) == 0  # the core verb, not the plugin's
    assert "echo" in [row["name"] for row in json.loads(capsys.readouterr().out)]
    assert cli.run(["shout", "ok"]) == 0
    capsys.readouterr()
    assert cli.run(["plugins", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["bad"]["status"] == "broken"
    assert rows["bad"]["errors"] == ["command 'list' would replace a core rewardkit command"]
    assert rows["unbuildable"]["status"] == "broken"
    assert rows["unbuildable"]["errors"] == [
        "command 'weird' could not be added: TypeError: expected a typer.Typer or a function, got int"]
    assert rows["cli-plugin"]["status"] == "ok"


def test_plugins_table_and_unknown_names(fresh_host, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.setenv("REWARDKIT_LOAD_PLUGINS", "")
    monkeypatch.setenv("REWARDKIT_DISABLE_PLUGINS", "rewardkit.world.plugin,ghost-plugin")
    reset_host(load_host(extra_plugins=[("cli-plugin", CliPlugin()), ("bad", BadCommands())]))
    assert cli.run(["plugins"]) == 0
    captured = capsys.readouterr()
    rows = {line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:-1]]
            for line in captured.out.splitlines() if line.startswith("│")}
    assert rows["cli-plugin"][1:3] == ["ok", "recipe: echo; commands: greet, shout"]
    version, status, _, remarks = rows["rewardkit.world.plugin (built-in)"]
    assert (version, status, remarks) == (rewardkit.__version__, "disabled",
                                          "in REWARDKIT_DISABLE_PLUGINS")
    assert rows["bad"][1] == "broken" and "would replace a core rewardkit command" in rows["bad"][3]
    assert ("unknown plugin name in REWARDKIT_LOAD_PLUGINS/REWARDKIT_DISABLE_PLUGINS: ghost-plugin"
            in captured.err)


def test_console_script_end_to_end(rewardkit_command, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "REWARDKIT_LOAD_PLUGINS": "",
           "REWARDKIT_DISABLE_PLUGINS": "ghost"}
    result = subprocess.run([*rewardkit_command, "--version"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert (result.returncode, result.stdout.strip()) == (0, f"rewardkit {rewardkit.__version__}")
    result = subprocess.run([*rewardkit_command, "run", "no-such-recipe"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: no recipe named 'no-such-recipe'; registered recipes:")
    assert "Traceback" not in result.stderr and result.stdout == ""
    result = subprocess.run([*rewardkit_command, "plugins", "--json"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "unknown plugin name" in result.stderr
    assert all(row["status"] in ("ok", "conflict", "disabled") for row in json.loads(result.stdout)
               if row["builtin"]), "a built-in plugin is broken"


def test_run_recipe_help_lists_every_config_key(cli_host, capsys):
    assert cli.run(["run", "echo", "--help"]) == 0
    out = capsys.readouterr().out
    assert "rewardkit run echo" in out
    for key in ("output_dir", "steps", "lora", "fail_with", "checkpointing_steps"):
        assert key in out
    assert cli.run(["run", "--help"]) == 0
    assert "RECIPE --help" in " ".join(capsys.readouterr().out.split())
    assert cli.run(["run", "nope", "--help"]) == 1
    assert "no recipe named 'nope'" in capsys.readouterr().err


def test_run_help_of_a_real_recipe_shows_types_defaults_and_help(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    assert cli.run(["run", "rg-lcd", "--help"]) == 0
    out = capsys.readouterr().out
    for text in ("pretrained_teacher_model", "(required)", "reward_scale", "proxy_rehearsal_set",
                 "overwrite_output_dir", "w_min"):
        assert text in out, text


@pytest.mark.parametrize("recipe", ["lcd", "rg-lcd", "lrm-pretrain"])
def test_every_config_key_is_in_exactly_one_help_topic(recipe):
    import rewardkit as rk

    config = rk.describe("recipe", recipe).factory.Config
    keys = [f.name for f in dataclasses.fields(config)]
    listed = [key for group in config.KEY_GROUPS.values() for key in group]
    assert sorted(listed) == sorted(keys), (set(keys) ^ set(listed))


def test_run_help_lists_the_keys_under_their_topics_in_order(capsys, monkeypatch):
    import rewardkit as rk

    monkeypatch.setenv("COLUMNS", "250")
    assert cli.run(["run", "rg-lcd", "--help"]) == 0
    lines = capsys.readouterr().out.splitlines()
    titles = list(rk.describe("recipe", "rg-lcd").factory.Config.KEY_GROUPS)
    rows = [line.split("│")[1].strip() for line in lines if line.startswith("│")]
    assert [r for r in rows if r in titles] == titles
    assert "Other" not in rows
    # a key sits under its own topic
    lora = rows.index("LoRA")
    assert "lora_rank" in rows[lora:rows.index(titles[titles.index("LoRA") + 1])]
    assert rows.index("proxy_lr") > rows.index("Latent proxy RM (LRM)")
