"""Keep the README and CONTRIBUTING honest: the CLI tour runs, the Python tour runs, the two
fresh-machine commands exist as Make targets, every hook and contract helper is documented."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from rewardkit import cli
from rewardkit.plugins import HOOK_NAMES, reset_host

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
CONTRIBUTING = (ROOT / "CONTRIBUTING.md").read_text()
NEEDS_MODELS = ("run", "sample")  # verbs that train or load weights: only their error examples run


def section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def tour_commands() -> list[tuple[dict[str, str], list[str], list[str]]]:
    """(env, argv, expected output lines) for every ``$ rewardkit ...`` line of the CLI tour."""
    commands = []
    for block in blocks(section(README, "CLI tour"), "console"):
        for line in block.splitlines():
            if line.startswith("$ "):
                words = shlex.split(line[2:], comments=True)
                env = {}
                while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
                    key, _, value = words.pop(0).partition("=")
                    env[key] = value
                assert words[0] == "rewardkit", line
                commands.append((env, words[1:], []))
            elif line.strip() and commands:
                commands[-1][2].append(line.strip())
    return commands


COMMANDS = tour_commands()


def test_the_tour_shows_the_core_verbs():
    verbs = {argv[0] for _, argv, _ in COMMANDS if argv}
    assert {"--version", "plugins", "list", "describe", "run"} <= verbs
    assert any(env for env, _, _ in COMMANDS), "the tour should show the plugin env vars"


@pytest.mark.parametrize("env, argv, expected", COMMANDS,
                         ids=[" ".join([*(f"{k}={v}" for k, v in e.items()), *a])
                              for e, a, _ in COMMANDS])
def test_cli_tour_command_runs(env, argv, expected, fresh_host, monkeypatch, capsys):
    errors_expected = bool(expected) and expected[0].startswith("Error:")
    if argv and argv[0] in NEEDS_MODELS and not errors_expected:
        pytest.skip(f"`rewardkit {argv[0]}` needs models")
    monkeypatch.setenv("COLUMNS", "250")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    reset_host()
    code = cli.run(argv)
    captured = capsys.readouterr()
    if errors_expected:
        assert code == 1, captured.out
        for line in expected:
            assert line in captured.err
    else:
        assert code == 0, captured.err
        for line in expected:
            assert line in captured.out


def test_python_api_tour_runs(fresh_host):
    code = blocks(section(README, "Python API tour"), "python")[0]
    namespace: dict = {}
    exec(compile(code, "README.md (Python API tour)", "exec"), namespace)
    scores = namespace["scores"]
    assert scores.shape == (2,)


def test_exactly_two_commands_for_a_fresh_machine():
    block = blocks(section(README, "Two commands for a fresh machine"), "console")[0]
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["make run", "make test"]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("target, command", [("run", "rewardkit run rg-lcd"), ("test", "pytest")])
def test_make_targets_exist(target, command):
    result = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert command in result.stdout


def test_contributing_documents_every_hook_and_helper():
    for hook in HOOK_NAMES:
        assert f"`{hook}`" in CONTRIBUTING, f"CONTRIBUTING.md does not document {hook}"
    from rewardkit.testing import build_tiny_sd_pipeline, check_reward_model  # noqa: F401
    from rewardkit.testing.solver_contract import check_solver  # noqa: F401
    for name in ("check_reward_model", "build_tiny_sd_pipeline", "check_solver"):
        assert name in CONTRIBUTING
