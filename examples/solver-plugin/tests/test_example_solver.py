"""Tests of the example plugin: the solver contract, the midpoint timestep, accuracy, registration.

Run from this folder with ``python -m pytest`` once the plugin and rewardkit are installed
(``pip install -e . --no-deps`` in a rewardkit environment).
"""

from __future__ import annotations

import pytest
import torch

import rewardkit_example_solver.plugin as plugin_module
from rewardkit.plugins import load_host
from rewardkit.solvers import DDIMSolver, HeunSolver
from rewardkit.testing.solver_contract import check_solver, sd_alphas_cumprod
from rewardkit_example_solver import MidpointSolver

ABAR = sd_alphas_cumprod()


@pytest.mark.parametrize("n", [50, 8, 500])
def test_meets_the_solver_contract(n):
    passed = check_solver(MidpointSolver, num_ddim_timesteps=n)
    assert "exact_denoiser" in passed and "evaluations" in passed


@pytest.mark.parametrize("n", [50, 8])
def test_the_midpoint_timestep_is_the_nearest_in_noise_level(n):
    solver = MidpointSolver(ABAR, num_ddim_timesteps=n)
    index = torch.arange(n)
    t_start, t_end = solver.start_timesteps(index), solver.end_timesteps(index)
    t_mid = solver.midpoint_timesteps(t_start, t_end)
    assert t_mid.dtype == torch.long and t_mid.shape == (n,)
    levels = solver.noise_levels
    for start, mid, end in zip(t_start.tolist(), t_mid.tolist(), t_end.tolist()):
        between = torch.arange(end + 1, start)
        target = (levels[start] + levels[end]) / 2
        assert mid == int(between[(levels[between] - target).abs().argmin()])


def test_adjacent_timesteps_fall_back_to_the_end_point():
    solver = MidpointSolver(ABAR, num_ddim_timesteps=500)  # k = 2: the last step is 1 -> 0
    t_start, t_end = solver.start_timesteps(torch.tensor([0])), solver.end_timesteps(torch.tensor([0]))
    assert (t_start.item(), t_end.item()) == (1, 0)
    assert solver.midpoint_timesteps(t_start, t_end).item() == 0


def _smooth_denoiser(solver):
    """Not a real denoiser, but deterministic and different at every timestep."""
    def denoise(z, t):
        alpha, sigma = solver.alpha_sigma(t, z)
        eps = torch.sin(z) + 0.01 * t.view(-1, 1, 1, 1)
        return (z - sigma * eps) / alpha, eps
    return denoise


def test_a_step_whose_midpoint_has_no_noise_is_the_ddim_step():
    abar = ABAR.clone()
    abar[0] = 1.0  # sigma(0) = 0: evaluating eps there is meaningless
    midpoint, ddim = MidpointSolver(abar, num_ddim_timesteps=500), DDIMSolver(abar, num_ddim_timesteps=500)
    z = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    index = torch.tensor([0, 10])
    out = midpoint.step(_smooth_denoiser(midpoint), z, index)
    reference = ddim.step(_smooth_denoiser(ddim), z, index)
    torch.testing.assert_close(out[0], reference[0], atol=1e-12, rtol=0)  # t_mid = 0: Euler
    assert (out[1] - reference[1]).abs().min() > 1e-6  # elsewhere the midpoint correction


# ----------------------------------------------------------------- accuracy on an analytic ODE

MU, SD = 0.3, 0.5  # Gaussian data N(MU, SD^2) per element: the exact denoiser is known


def _gaussian_denoiser(solver):
    def denoise(z, t):
        alpha, sigma = solver.alpha_sigma(t, z)
        x0 = MU + alpha * SD ** 2 / (alpha ** 2 * SD ** 2 + sigma ** 2) * (z - alpha * MU)
        return x0, (z - alpha * x0) / sigma
    return denoise


def _exact_flow(solver, z, t_from, t_to):
    """The PF-ODE solution: (z/alpha - MU) / sqrt(SD^2 + (sigma/alpha)^2) is constant along it."""
    alpha, sigma = solver.alpha_sigma(t_from, z)
    alpha_to, sigma_to = solver.alpha_sigma(t_to, z)
    scale = torch.sqrt(SD ** 2 + (sigma_to / alpha_to) ** 2) / torch.sqrt(SD ** 2 + (sigma / alpha) ** 2)
    return alpha_to * (MU + (z / alpha - MU) * scale)


def _step_errors(cls):
    solver = cls(ABAR)
    index = torch.arange(50)
    z = torch.randn(50, 1, 4, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64) * 2
    exact = _exact_flow(solver, z, solver.start_timesteps(index), solver.end_timesteps(index))
    return (solver.step(_gaussian_denoiser(solver), z, index) - exact).flatten(1).abs().amax(1)


def test_every_step_is_far_closer_to_the_exact_flow_than_ddim_and_heun():
    midpoint, ddim, heun = _step_errors(MidpointSolver), _step_errors(DDIMSolver), _step_errors(HeunSolver)
    assert bool((midpoint < ddim / 100).all()), (midpoint / ddim).max()
    assert bool((midpoint < heun).all()), (midpoint / heun).max()


def _trajectory_error(cls, n):
    solver = cls(ABAR, num_ddim_timesteps=n)
    z_T = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    z = z_T
    for index in reversed(range(n)):
        z = solver.step(_gaussian_denoiser(solver), z, torch.full((8,), index))
    exact = _exact_flow(solver, z_T, torch.full((8,), 999), torch.zeros(8, dtype=torch.long))
    return (z - exact).abs().max().item()


def test_the_whole_trajectory_converges_at_second_order():
    coarse, fine = _trajectory_error(MidpointSolver, 25), _trajectory_error(MidpointSolver, 100)
    # a 4x finer grid: first order divides the error by about 4, second order by about 16
    assert coarse / fine > 10, (coarse, fine)
    assert coarse < _trajectory_error(DDIMSolver, 100) / 100


# --------------------------------------------------------------------------------- the hook


def test_plugin_registers_the_solver_through_the_hook(monkeypatch):
    # load the module in-process only, not also through its entry point (if installed)
    monkeypatch.setenv("REWARDKIT_LOAD_PLUGINS", "")
    host = load_host(extra_plugins=[("rewardkit-example-solver-inline", plugin_module)])
    info = host.plugins["rewardkit-example-solver-inline"]
    assert info.status == "ok", info.errors
    assert info.components["solver"] == ["midpoint"]
    spec = host.get("solver", "midpoint")
    assert {p.name: p.default for p in spec.params}["num_ddim_timesteps"] == 50
    solver = spec.build(alphas_cumprod=ABAR, num_ddim_timesteps=25)
    assert isinstance(solver, MidpointSolver) and solver.skip == 40
