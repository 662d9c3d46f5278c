"""The rectified-flow noise process (rewardkit.flow_matching) against diffusers' flow schedulers
and the flow equations, and the solvers and the guided denoiser on it."""

from __future__ import annotations

import pytest
import torch

from rewardkit.errors import ConfigError
from rewardkit.flow_matching import FlowMatchProcess
from rewardkit.noise_process import NoiseProcess
from rewardkit.schedule import NoiseSchedule
from rewardkit.solvers import DDIMSolver, HeunSolver, teacher_denoiser
from rewardkit.backbones import Conditioning
from rewardkit.testing.solver_contract import sd_alphas_cumprod

T = 1000


def _field(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A nonlinear velocity field v(z, t) standing in for a teacher."""
    s = t.float().view(-1, *([1] * (z.ndim - 1))) / T
    return torch.tanh(z) * (1 + s) + 0.1 * z - s


def _estimates(z: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps) of the velocity field, written from x0 = z - s v, eps = z + (1 - s) v."""
    v = _field(z, t)
    s = t.float().view(-1, *([1] * (z.ndim - 1))) / T
    return z - s * v, z + (1 - s) * v


def test_the_noise_levels_and_forward_process_are_diffusers():
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=T, shift=3.0)
    process = FlowMatchProcess.from_scheduler_config(dict(scheduler.config))
    assert isinstance(process, NoiseProcess) and process.shift == 3.0
    torch.testing.assert_close(process.sigmas().float(), scheduler.sigmas.flip(0))
    x0, eps = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    t = scheduler.timesteps[[10, 700]]
    torch.testing.assert_close(process.add_noise(x0, eps, t), scheduler.scale_noise(x0, t, eps))
    z = process.add_noise(x0, eps, t)
    velocity = eps - x0
    torch.testing.assert_close(process.predicted_origin(velocity, t, z), x0)
    torch.testing.assert_close(process.predicted_noise(velocity, t, z), eps)


def test_the_grid_is_the_ddpm_grid_on_the_shifted_levels_with_a_clean_end():
    process = FlowMatchProcess(shift=3.0)
    grid = process.skipping_grid(50)
    levels = process.sigmas()
    assert grid.dtype == torch.float32 and grid.shape == (51,)
    assert grid[0] == 0 and grid[-1] == T
    torch.testing.assert_close(grid[1:], (T * levels[torch.arange(19, 1000, 20)]).float())
    assert bool((grid[1:] > grid[:-1]).all())
    solver = DDIMSolver(process, 50)
    index = torch.tensor([0, 1, 49])
    torch.testing.assert_close(solver.start_timesteps(index), grid[[1, 2, 50]])
    torch.testing.assert_close(solver.end_timesteps(index), grid[[0, 1, 49]])


def test_the_consistency_function_is_x0_and_keeps_the_boundary():
    process = FlowMatchProcess(shift=3.0)
    z, v = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    t = torch.tensor([0.0, 500.0])
    x0 = process.predicted_origin(v, t, z)
    assert torch.equal(process.consistency_output(z, x0, t), x0)
    assert torch.equal(x0[0], z[0])  # f(z, 0) = z


def test_the_ddim_solver_is_diffusers_flow_euler_step():
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=T, shift=3.0)
    scheduler.set_timesteps(4)
    solver = DDIMSolver(FlowMatchProcess(shift=3.0), 50)
    z = torch.randn(1, 4, 3, 3)
    for i, t in enumerate(scheduler.timesteps):
        t_end = scheduler.sigmas[i + 1] * T
        x0, eps = _estimates(z, t.expand(1))
        ours = solver.ddim_step(x0, eps, t_end.expand(1), z)
        theirs = scheduler.step(_field(z, t.expand(1)), t, z).prev_sample
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        z = theirs


def test_the_heun_solver_is_diffusers_flow_heun_step():
    from diffusers import FlowMatchHeunDiscreteScheduler

    scheduler = FlowMatchHeunDiscreteScheduler(num_train_timesteps=T, shift=3.0)
    scheduler.set_timesteps(3)
    z = torch.randn(2, 4, 3, 3)
    expected = z
    for t in scheduler.timesteps[:2]:  # one Heun step: predictor at s_0, corrector at s_1
        expected = scheduler.step(_field(expected, t.expand(2)), t, expected).prev_sample
    start, end = (scheduler.sigmas[i] * T for i in (0, 1))
    solver = HeunSolver(FlowMatchProcess(shift=3.0), 1)
    solver.grid = torch.stack([end, start])  # one step from s_0 to s_1
    solver.timesteps = solver.grid[1:]
    ours = solver.step(_estimates, z, torch.tensor([0, 0]))
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    # and written out: z + (s_1 - s_0) (v(z, s_0) + v(z_e, s_1)) / 2
    s0, s1 = start / T, end / T
    v1 = _field(z, start.expand(2))
    z_e = z + (s1 - s0) * v1
    written = z + (s1 - s0) * (v1 + _field(z_e, end.expand(2))) / 2
    torch.testing.assert_close(ours, written, rtol=1e-5, atol=1e-5)


def test_guidance_inside_the_solver_is_cfg_on_the_velocity():
    process = FlowMatchProcess(shift=3.0)
    z = torch.randn(2, 4, 3, 3)
    t = torch.tensor([900.0, 300.0])
    w = torch.tensor([3.0, 5.0])
    cond = Conditioning(torch.ones(2, 1, 1))
    uncond = Conditioning(torch.zeros(2, 1, 1))

    def unet_fn(x, time, c):  # a velocity that depends on the prompt
        return _field(x, time) + c.prompt_embeds.view(-1, 1, 1, 1)

    for batched in (True, False):
        x0, eps = teacher_denoiser(unet_fn, cond, uncond, process, w, batched=batched)(z, t)
        v_c, v_u = unet_fn(z, t, cond), unet_fn(z, t, uncond)
        v = v_u + (1 + w.view(-1, 1, 1, 1)) * (v_c - v_u)  # diffusers' CFG with scale 1 + w
        s = (t / T).view(-1, 1, 1, 1)
        torch.testing.assert_close(x0, z - s * v)
        torch.testing.assert_close(eps, z + (1 - s) * v)


def test_a_built_solver_must_be_on_the_teachers_process():
    flow = FlowMatchProcess(shift=3.0)
    DDIMSolver(flow, 50).check_fits(FlowMatchProcess(shift=3.0), 50)
    with pytest.raises(ConfigError, match="not the teacher's"):
        DDIMSolver(flow, 50).check_fits(FlowMatchProcess(shift=1.0), 50)
    with pytest.raises(ConfigError, match="not the teacher's"):
        DDIMSolver(NoiseSchedule(sd_alphas_cumprod()), 50).check_fits(flow, 50)
    DDIMSolver(sd_alphas_cumprod(), 50).check_fits(sd_alphas_cumprod(), 50)  # DDPM as before


@pytest.mark.parametrize("key", ["use_dynamic_shifting", "invert_sigmas", "shift_terminal"])
def test_an_unsupported_flow_schedule_is_refused_by_name(key):
    with pytest.raises(ConfigError, match=key):
        FlowMatchProcess.from_scheduler_config({"shift": 3.0, key: 0.5 if key == "shift_terminal"
                                                else True}, where="teacher")
    with pytest.raises(ConfigError, match="shift must be positive"):
        FlowMatchProcess(shift=0.0)
