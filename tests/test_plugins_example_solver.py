"""The example solver plugin (``examples/solver-plugin``), pip-installed like a user would."""

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
from rewardkit.config import config_to_dict
from rewardkit.solvers import ConsistencySolver, DDIMSolver
from rewardkit.testing.solver_contract import check_solver, sd_alphas_cumprod

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "solver-plugin"


@pytest.fixture
def example_installed(example_solver_site, on_sys_path, monkeypatch):
    """The example plugin importable and discoverable, and no other third-party plugin loaded."""
    return load_only(example_solver_site, "rewardkit-example-solver", on_sys_path, monkeypatch)


def test_rewardkit_plugins_shows_the_example(example_installed, capsys):
    assert cli.run(["plugins", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    row = rows["rewardkit-example-solver"]
    assert (row["version"], row["status"], row["builtin"]) == ("0.1.0", "ok", False)
    assert row["module"] == "rewardkit_example_solver.plugin"
    assert row["components"] == {"solver": ["midpoint"]}

    assert cli.run(["plugins"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if "rewardkit-example-solver" in l)
    assert "0.1.0" in line and " ok " in line and "solver: midpoint" in line


def test_rewardkit_list_solver_shows_it_beside_the_builtins(example_installed, capsys):
    assert cli.run(["list", "solver", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"ddim", "heun", "midpoint"}
    assert rows["midpoint"]["plugin"] == "rewardkit-example-solver"
    assert rows["midpoint"]["description"].startswith("Explicit midpoint rule on the PF-ODE")
    assert cli.run(["list", "solver"]) == 0
    assert "midpoint" in capsys.readouterr().out


def test_solver_resolves_to_the_installed_plugin_and_passes_the_contract(example_installed):
    solver = rk.solver("midpoint", alphas_cumprod=sd_alphas_cumprod(), num_ddim_timesteps=25)
    module = sys.modules[type(solver).__module__]
    assert str(example_installed) in module.__file__  # the pip-installed copy, not the source tree
    assert isinstance(solver, ConsistencySolver) and solver.evaluations_per_step == 2
    assert solver.skip == 40 and solver.timesteps.tolist() == list(range(39, 1000, 40))
    passed = check_solver(solver)
    assert "exact_denoiser" in passed and "evaluations" in passed
    # a real second step: on a non-trivial denoiser it differs from DDIM's
    g = torch.Generator().manual_seed(0)
    z, index = torch.randn(3, 4, 8, 8, generator=g), torch.tensor([0, 12, 24])

    def denoise(zz, t):
        alpha, sigma = solver.alpha_sigma(t, zz)
        eps = torch.tanh(zz) + 1e-3 * t.view(-1, 1, 1, 1)
        return (zz - sigma * eps) / alpha, eps

    ddim = DDIMSolver(sd_alphas_cumprod(), num_ddim_timesteps=25)
    assert (solver.step(denoise, z, index) - ddim.step(denoise, z, index)).abs().max() > 1e-3


def test_console_script_sees_the_example(example_installed, rewardkit_command):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*rewardkit_command, "describe", "solver", "midpoint"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "solver midpoint (from rewardkit-example-solver)" in result.stdout
    assert "alphas_cumprod" in result.stdout and "num_ddim_timesteps" in result.stdout


def test_rewardkit_run_lcd_trains_with_the_plugin_solver(example_installed, tmp_path):
    from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline
    from rewardkit.training.metrics import read_metrics
    from rewardkit.testing.tiny_training import tiny_lcd_config, write_tiny_image_folder

    teacher = build_tiny_sd_pipeline(tmp_path / "teacher")
    data = write_tiny_image_folder(tmp_path / "data", count=4, size=16)
    out = tmp_path / "out"
    config = tiny_lcd_config(teacher, data, out, max_train_steps=2, num_ddim_timesteps=10)
    config_file = tmp_path / "lcd.json"
    config_file.write_text(json.dumps(config_to_dict(config), default=str))

    assert cli.run(["run", "lcd", "--config", str(config_file), "--solver", "midpoint"]) == 0
    assert json.loads((out / "config.json").read_text())["solver"] == "midpoint"
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r["lcd_loss"])) and r["lcd_loss"] > 0 for r in rows)


def test_the_examples_own_tests_pass_against_the_installed_copy(example_installed):
    assert_own_tests_pass(EXAMPLE, example_installed)
