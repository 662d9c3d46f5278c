"""The example third-party plugin (``examples/reward-plugin``), pip-installed like a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rewardkit as rk
from example_plugins import assert_own_tests_pass, load_only
from rewardkit import cli

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "reward-plugin"


@pytest.fixture
def example_installed(example_plugin_site, on_sys_path, monkeypatch):
    """The example plugin importable and discoverable, and no other third-party plugin loaded."""
    return load_only(example_plugin_site, "rewardkit-example-reward", on_sys_path, monkeypatch)


def test_rewardkit_plugins_shows_the_example(example_installed, capsys):
    assert cli.run(["plugins", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    row = rows["rewardkit-example-reward"]
    assert (row["version"], row["status"], row["builtin"]) == ("0.1.0", "ok", False)
    assert row["module"] == "rewardkit_example_reward.plugin"
    assert row["components"] == {"reward": ["colorfulness", "sharpness"]}

    assert cli.run(["plugins"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if "rewardkit-example-reward" in l)
    assert "0.1.0" in line and " ok " in line and "reward: colorfulness, sharpness" in line


def test_rewardkit_list_reward_shows_its_models(example_installed, capsys):
    assert cli.run(["list", "reward", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["colorfulness"]["plugin"] == "rewardkit-example-reward"
    assert rows["sharpness"]["description"].startswith("Variance of the Laplacian of the luma")
    assert cli.run(["list", "reward"]) == 0
    table = capsys.readouterr().out
    assert "colorfulness" in table and "sharpness" in table


def test_reward_model_resolves_to_the_installed_plugin_and_scores(example_installed):
    rm = rk.reward_model("colorfulness", scale=255.0)
    module = sys.modules[type(rm).__module__]
    assert str(example_installed) in module.__file__  # the pip-installed copy, not the source tree
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    images[0] = 0.5  # a grey image is the least colourful
    scores = rm(images, ["a prompt"] * 4)
    assert scores.shape == (4,) and torch.isfinite(scores).all()
    assert scores.argmin().item() == 0 and scores[1:].min() > 10
    sharp = rk.reward_model("sharpness")
    assert sharp(images, ["a prompt"] * 4).shape == (4,)


def test_console_script_sees_the_example(example_installed, rewardkit_command):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*rewardkit_command, "describe", "reward", "colorfulness"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "reward colorfulness (from rewardkit-example-reward)" in result.stdout
    assert "scale" in result.stdout and "eps" in result.stdout


def test_the_examples_own_tests_pass_against_the_installed_copy(example_installed):
    assert_own_tests_pass(EXAMPLE, example_installed)
