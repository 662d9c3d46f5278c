"""The example recipe plugin (``examples/recipe-plugin``), pip-installed like a user would: it
registers, runs by name, passes its own tests (the recipe contract among them) and imports only
what docs/training.md lists as the public API for recipes."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

import rewardkit as rk
from example_plugins import assert_own_tests_pass, load_only
from rewardkit import cli

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "recipe-plugin"


@pytest.fixture
def example_installed(example_recipe_site, on_sys_path, monkeypatch):
    return load_only(example_recipe_site, "rewardkit-example-recipe", on_sys_path, monkeypatch)


def test_rewardkit_lists_the_recipe_beside_the_builtins(example_installed, capsys):
    assert cli.run(["list", "recipe", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"lcd", "rg-lcd", "lrm-pretrain", "draft", "grpo", "rwr"}
    assert rows["rwr"]["plugin"] == "rewardkit-example-recipe"
    recipe = rk.describe("recipe", "rwr").factory
    assert str(example_installed) in __import__(recipe.__module__).__file__  # the installed copy
    assert cli.run(["run", "rwr", "--help"]) == 0
    out = capsys.readouterr().out
    assert "temperature" in out and "Reward weighting" in out and "max_train_steps" in out


def test_the_examples_own_tests_pass_against_the_installed_copy(example_installed):
    assert_own_tests_pass(EXAMPLE, example_installed)


def documented_public_api() -> set[str]:
    section = (REPO / "docs" / "training.md").read_text().split(
        "### The public API for recipes", 1)[1].split("and the backbone's methods", 1)[0]
    return set(re.findall(r"`(rewardkit[\w.]*)`", section))


def test_the_example_imports_only_the_documented_public_api():
    public = documented_public_api()
    assert "rewardkit.training.TrainingLoop" in public
    used = set()
    for path in (EXAMPLE / "rewardkit_example_recipe").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rewardkit"):
                used |= {f"{node.module}.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.Import):
                used |= {a.name for a in node.names if a.name.startswith("rewardkit")}
    assert used and used <= public, sorted(used - public)
    algorithm = EXAMPLE / "rewardkit_example_recipe" / "rwr.py"
    assert len(algorithm.read_text().splitlines()) <= 150
