"""Keep the README, CONTRIBUTING and docs honest: the CLI tour runs, the Python tour runs, the two
fresh-machine commands exist as Make targets, every hook and contract helper is documented, and
every command of every page is run by a test or marked as needing weights, a GPU, the network,
minutes or a server (and then checked without running it)."""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
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


# --- Every command of the README, CONTRIBUTING.md and docs/*.md: run below, or marked ---------
#
# A shell line of a fenced ```bash / ```sh / ```console block (or an untagged one) that starts a
# program of PROGRAMS is a documented command. Each is either run by a test (RUN_HERE: run by
# test_documented_commands_run, with the arguments that make it tiny appended; the CLI tour:
# test_cli_tour_command_runs; RUN_ELSEWHERE: a test file that runs it) or marked on its last line
# with a comment `# needs: TAG[, TAG]` (CONTRIBUTING.md, "Documentation"). A marked command is
# still checked without running it: its subcommand and options exist, the repository paths it
# names exist, a `rewardkit run` command's keys are the recipe's, a benchmark accepts its flags.

PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console"}
PROGRAMS = {"rewardkit", "python", "python3", "accelerate", "pip", "make", "torchrun", "bash"}
NEEDS = {
    "weights": "downloads model weights (the hub, a reward plugin's checkpoint)",
    "gpu": "needs a CUDA GPU, or several",
    "network": "downloads packages, or talks to a server that must be running",
    "minutes": "takes longer than a test may (tens of seconds and up), or reads such a run's output",
    "server": "serves until stopped (Ctrl-C)",
}
NEEDS_MARK = re.compile(r"\bneeds: ([a-z]+(?:, *[a-z]+)*)")
ENV_WORD = re.compile(r"[A-Z_][A-Z0-9_]*=.*")


class DocCommand:
    """One documented command: where it is, its text (continuation lines joined, the comment
    off, spaces collapsed), its words and the tags of its `# needs:` mark."""

    def __init__(self, page: Path, line: int, code: str, comment: str):
        self.where = f"{page.relative_to(ROOT)}:{line}"
        self.text = " ".join(code.split())
        self.words = shlex.split(code)
        mark = NEEDS_MARK.search(comment)
        self.needs = tuple(t.strip() for t in mark.group(1).split(",")) if mark else ()
        self.env: dict[str, str] = {}
        self.argv = list(self.words)
        while self.argv and ENV_WORD.fullmatch(self.argv[0]):
            key, _, value = self.argv.pop(0).partition("=")
            self.env[key] = value

    @property
    def program(self) -> str:
        return Path(self.argv[0]).name if self.argv else ""

    def __repr__(self) -> str:
        return f"{self.where}: {self.text}"


def split_comment(line: str) -> tuple[str, str]:
    """``("code", "comment")``: the first ``#`` outside quotes that starts a word starts a comment."""
    quote = None
    for index, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index], line[index + 1:]
    return line, ""


def page_commands(page: Path) -> list[DocCommand]:
    lines = page.read_text().splitlines()
    commands, index = [], 0
    while index < len(lines):
        fence = re.fullmatch(r"\s*```(\w*)\s*", lines[index])
        index += 1
        if not fence:
            continue
        start = index
        while index < len(lines) and not re.fullmatch(r"\s*```\s*", lines[index]):
            index += 1
        body, index = lines[start:index], index + 1
        if fence.group(1) not in SHELL_BLOCKS:
            continue
        prompted = any(line.lstrip().startswith("$ ") for line in body)
        k = 0
        while k < len(body):
            text, number = body[k].strip(), start + k + 1
            k += 1
            if prompted:
                if not text.startswith("$ "):
                    continue
                text = text[2:]
            while text.endswith("\\") and k < len(body):
                text = text[:-1] + " " + body[k].strip()
                k += 1
            code, comment = split_comment(text)
            words = [w for w in code.split() if not ENV_WORD.fullmatch(w)]
            if not words or Path(words[0]).name not in PROGRAMS:  # prose, output, a file tree
                continue
            try:
                command = DocCommand(page, number, code, comment)
            except ValueError as error:  # shlex: an unclosed quote
                raise AssertionError(f"{page.relative_to(ROOT)}:{number}: cannot split `{text}` "
                                     f"into words ({error})") from None
            commands.append(command)
    return commands


DOCUMENTED = [command for page in PAGES for command in page_commands(page)]

TINY_EVAL = ("--limit", "2", "--steps", "1", "--teacher-steps", "2")
#: scenario -> [(documented command, arguments appended to make it tiny, files it must write)];
#: the commands of a scenario run in order, in one folder that holds an untrained student at
#: the paths the docs use (rg-lcd-world/pipeline, lcd-world/pipeline, runs/my-lcm), the shipped
#: teacher at rewardkit/world/assets/teacher, the repository's examples/ and benchmarks/, and a
#: two-line prompts.txt.
RUN_HERE: dict[str, list[tuple[str, tuple[str, ...], tuple[str, ...]]]] = {
    "inspect": [
        ("rewardkit list", (), ()),
        ("rewardkit describe recipe rg-lcd", (), ()),
        ("rewardkit plugins", (), ()),
        ("REWARDKIT_TRACE_PLUGINS=1 rewardkit list", (), ()),
        ("REWARDKIT_LOAD_PLUGINS=rewardkit-myreward rewardkit list reward", (), ()),
    ],
    "plan": [
        ("rewardkit run rg-lcd --config examples/configs/sd21-hpsv21-80gb.toml --plan "
         "--num_processes 8 --gpu_memory 80GiB", (), ()),
        ("rewardkit run rg-lcd --config examples/configs/sd21-hpsv21.toml --plan "
         "--num_processes 8 --gpu_memory 80GiB", (), ()),
    ],
    "student": [
        ("rewardkit eval rg-lcd-world/pipeline --teacher rewardkit/world/assets/teacher -o eval-world",
         TINY_EVAL, ("eval-world/report.md",)),
        ('rewardkit sample runs/my-lcm "a photo of a cat" --steps 2 --guidance 7.5 --seed 0 -o cat.png',
         (), ("cat.png",)),
        ("rewardkit sample runs/my-lcm --prompt-file prompts.txt -o out.png", (),
         ("out_000.png", "out_001.png")),
        ("rewardkit sample runs/my-lcm --prompt-file prompts.txt -o grid.png --grid", (), ("grid.png",)),
        ("rewardkit vote lcd-world/pipeline rewardkit/world/assets/teacher --prepare-only -o votes.jsonl",
         ("--limit", "2", "--steps", "1,2"), ("votes-images",)),
        ("rewardkit vote simulate votes.jsonl --reward world-judge --raters 3", (), ()),
        ("rewardkit vote report votes.jsonl --metrics world-judge,world-scorer", (), ("votes-report.md",)),
        ("rewardkit vote report votes.jsonl", (), ()),
        ("rewardkit vote export votes.jsonl", (), ("votes-preference-set",)),
    ],
    "benchmarks": [
        ("python benchmarks/bad_inputs.py --list", (), ()),
    ],
}
#: documented command -> the test file that runs it (as the words given here, in a cli.run list)
RUN_ELSEWHERE = {
    "rewardkit world build --size tiny --out tiny-world": (
        "tests/test_world_build.py", ["world", "build", "--size", "tiny", "--out"]),
    "rewardkit world build --teacher flow --size tiny --out tiny-world": (
        "tests/test_world_flow.py", ["world", "build", "--teacher", "flow", "--size", "tiny",
                                     "--out"]),
}
TOUR = {" ".join([*(f"{k}={v}" for k, v in env.items()), "rewardkit", *argv]) for env, argv, _ in COMMANDS}
RUN = {text for scenario in RUN_HERE.values() for text, _, _ in scenario} | set(RUN_ELSEWHERE) | TOUR


def test_every_documented_command_is_run_by_a_test_or_marked():
    problems = []
    for command in DOCUMENTED:
        unknown = [tag for tag in command.needs if tag not in NEEDS]
        if unknown:
            problems.append(f"{command.where}: `{command.text}` is marked with unknown needs "
                            f"{unknown}; the tags are {', '.join(NEEDS)}.")
        elif command.text not in RUN and not command.needs:
            problems.append(f"{command.where}: `{command.text}` is neither run by a test (add it to "
                            f"RUN_HERE in tests/test_cli_readme.py) nor marked `# needs: "
                            f"{'|'.join(NEEDS)}` at the end of its line.")
    assert not problems, "\n".join(problems)


def test_every_command_the_tests_run_is_still_documented():
    documented = {command.text for command in DOCUMENTED}
    stale = sorted((RUN - TOUR) - documented)
    assert not stale, f"run by tests/test_cli_readme.py but in no page any more: {stale}"
    for text, (test_file, words) in RUN_ELSEWHERE.items():
        source = (ROOT / test_file).read_text()
        assert "cli.run([" + ", ".join(repr(w).replace("'", '"') for w in words) in source, (
            f"{test_file} no longer runs `{text}`")


@pytest.fixture(scope="module")
def untrained_student(tmp_path_factory):
    """The shipped teacher saved as a student (a guidance embedding added, untrained): a
    student's folder at a student's cost, without training one."""
    from rewardkit.backbones.stable_diffusion import StableDiffusionBackbone
    from rewardkit.world.assets import TEACHER, asset_path

    backbone = StableDiffusionBackbone(str(asset_path(TEACHER)))
    return backbone.save_pipeline(backbone.build_student(), tmp_path_factory.mktemp("student"))


def workspace(folder: Path, student: Path | None) -> Path:
    from rewardkit.world.assets import TEACHER, asset_path

    (folder / "rewardkit/world/assets").mkdir(parents=True)
    (folder / "rewardkit/world/assets/teacher").symlink_to(asset_path(TEACHER))
    for name in ("examples", "benchmarks"):
        (folder / name).symlink_to(ROOT / name)
    if student is not None:
        for link in ("rg-lcd-world/pipeline", "lcd-world/pipeline", "runs/my-lcm"):
            (folder / link).parent.mkdir(parents=True, exist_ok=True)
            (folder / link).symlink_to(student)
    (folder / "prompts.txt").write_text("a red circle on a blue background\ntwo green squares\n")
    return folder


@pytest.mark.parametrize("scenario", list(RUN_HERE))
def test_documented_commands_run(scenario, request, tmp_path, fresh_host, monkeypatch, capsys):
    student = request.getfixturevalue("untrained_student") if scenario == "student" else None
    monkeypatch.chdir(workspace(tmp_path, student))
    monkeypatch.setenv("COLUMNS", "200")
    for text, tiny, writes in RUN_HERE[scenario]:
        command = next((c for c in DOCUMENTED if c.text == text), None)
        assert command is not None, f"`{text}` is in no page"
        with monkeypatch.context() as env:
            for key, value in command.env.items():
                env.setenv(key, value)
            if command.program == "rewardkit":
                reset_host()
                code = cli.run([*command.argv[1:], *tiny])
                captured = capsys.readouterr()
                output = captured.out + captured.err
            else:
                assert command.program == "python", text
                done = subprocess.run([sys.executable, *command.argv[1:], *tiny], capture_output=True,
                                      text=True, timeout=300,
                                      env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
                code, output = done.returncode, done.stdout + done.stderr
        assert code == 0, f"`{text}` failed ({code}): {output[-2000:]}"
        for path in writes:
            assert (tmp_path / path).exists(), f"`{text}` did not write {path}"


# --- Marked commands: checked without running them ------------------------------------------

MARKED = [command for command in DOCUMENTED if command.needs and command.text not in RUN]
REPO_DIRS = ("benchmarks", "docs", "examples", "plugins", "rewardkit", "tests", ".ci")


def check_repository_paths(command: DocCommand) -> None:
    """Every word that names a path inside the repository (``examples/...``) names one that exists."""
    for word in command.argv[1:]:
        value = word.partition("=")[2] if word.startswith("--") else word
        path = value[2:] if value.startswith("./") else value
        if "/" in path and path.split("/")[0] in REPO_DIRS:
            assert (ROOT / path).exists(), f"{command}: {value} does not exist"


@functools.cache
def cli_command():
    """The CLI as click sees it (built once: the marked commands only parse with it)."""
    import typer

    return typer.main.get_command(cli.build_app())


def check_rewardkit(command: DocCommand, args: list[str]) -> None:
    """The subcommand exists and takes these options and values (click parses them, nothing
    runs); for `run`, the recipe exists and knows every --key, with values of the right types."""
    from rewardkit.config import (apply_aliases, check_keys, load_config, normalise_key,
                                  parse_cli_overrides)
    from rewardkit.plugins import get_host

    words = [word for word in args if word != "..."]  # `...`: the options of the example above
    cmd, path = cli_command(), []
    while hasattr(cmd, "commands"):  # a group (typer may vendor click: no isinstance)
        if words and words[0] in cmd.commands:
            name = words.pop(0)
        elif "study" in cmd.commands:  # `rewardkit vote A B` is `rewardkit vote study A B`
            name = "study"
        else:
            raise AssertionError(f"{command}: `rewardkit {' '.join(path)}` has no subcommand {words[:1]}")
        cmd, path = cmd.commands[name], [*path, name]
    click_errors = cli._click_exceptions()[0]
    try:
        ctx = cmd.make_context(" ".join(path), list(words))
    except click_errors as error:
        raise AssertionError(f"{command}: {error.format_message()}") from None
    assert path, f"{command}: no subcommand"
    if path == ["run"]:
        config, recipe = ctx.params["config"], ctx.params["recipe"]
        overrides = parse_cli_overrides(list(ctx.args))
        try:
            config_class = get_host().get("recipe", recipe).factory.Config
            overrides = apply_aliases(config_class, {normalise_key(k): v
                                                     for k, v in overrides.items()})
            check_keys(config_class, overrides)
            if config is not None and (ROOT / config).exists():  # else the reader's own file
                load_config(config_class, ROOT / config, overrides, validate=False)
        except Exception as error:  # a RewardkitError names the key
            raise AssertionError(f"{command}: {error}") from None


def check_launcher(command: DocCommand) -> None:
    """accelerate launch / torchrun take the launcher's flags, then `-m rewardkit ...`."""
    argv = command.argv
    assert "-m" in argv and argv[argv.index("-m") + 1] == "rewardkit", f"{command}: not `-m rewardkit`"
    split = argv.index("-m")
    if command.program == "accelerate":
        from accelerate.commands.launch import launch_command_parser

        assert argv[1] == "launch", command
        parser, flags = launch_command_parser(), argv[2:split]
    else:
        from torch.distributed.run import get_args_parser

        parser, flags = get_args_parser(), argv[1:split]
    try:
        parser.parse_args([*flags, "-m", "rewardkit"])
    except SystemExit:
        raise AssertionError(f"{command}: {command.program} refuses {flags}") from None
    check_rewardkit(command, argv[split + 2:])


def check_pip(command: DocCommand) -> None:
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert command.argv[1] == "install", command
    for word in command.argv[2:]:
        name, _, extra = word.partition("[")
        if word.startswith("-"):
            continue
        if name == "rewardkit":
            assert extra.rstrip("]") in extras, f"{command}: rewardkit has no extra [{extra}"
        elif name == "." or name.startswith("./plugins/"):
            assert (ROOT / name / "pyproject.toml").exists(), f"{command}: {name} is not a package here"


def check_make(command: DocCommand) -> None:
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    for word in command.argv[1:]:
        if not ENV_WORD.fullmatch(word):
            assert word in targets, f"{command}: the Makefile has no target {word}"


@pytest.mark.parametrize("command", MARKED, ids=[c.where for c in MARKED])
def test_marked_command_is_well_formed(command, fresh_host):
    check_repository_paths(command)
    program = command.program
    if program == "rewardkit":
        check_rewardkit(command, command.argv[1:])
    elif program in ("accelerate", "torchrun"):
        check_launcher(command)
    elif program == "pip":
        check_pip(command)
    elif program == "make":
        check_make(command)
    elif program == "bash":
        assert (ROOT / command.argv[1]).exists(), f"{command}: no {command.argv[1]}"
    elif program in ("python", "python3") and command.argv[1] == "-m":
        assert command.argv[2] == "pytest", command
    else:  # a benchmark: test_marked_benchmarks_accept_their_flags
        assert program in ("python", "python3") and command.argv[1].startswith("benchmarks/"), command
        assert (ROOT / command.argv[1]).exists(), f"{command}: no {command.argv[1]}"


def test_marked_benchmarks_accept_their_flags():
    """Each benchmark a marked command runs lists every flag of the command in its --help (one
    process prints them all: the scripts' imports are paid once)."""
    scripts = {c.argv[1]: [] for c in MARKED if c.program.startswith("python") and c.argv[1] != "-m"}
    for command in MARKED:
        if command.argv[1] in scripts:
            scripts[command.argv[1]].append(command)
    helper = ("import contextlib, io, json, runpy, sys\n"
              "helps = {}\n"
              "for script in sys.argv[1:]:\n"
              "    buffer = io.StringIO()\n"
              "    sys.argv = [script, '--help']\n"
              "    with contextlib.redirect_stdout(buffer):\n"
              "        try:\n"
              "            runpy.run_path(script, run_name='__main__')\n"
              "        except SystemExit:\n"
              "            pass\n"
              "    helps[script] = buffer.getvalue()\n"
              "print('HELPS' + json.dumps(helps))\n")
    done = subprocess.run([sys.executable, "-c", helper, *scripts], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1",
                                                      "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    helps = json.loads(done.stdout.split("HELPS", 1)[1])
    for script, commands in scripts.items():
        assert "usage:" in helps[script], f"{script} --help printed no usage: {helps[script][:500]}"
        for command in commands:
            for word in command.argv[2:]:
                flag = word.split("=")[0]
                if flag.startswith("--"):
                    assert re.search(rf"{re.escape(flag)}\b", helps[script]), (
                        f"{command}: {script} has no flag {flag}")
