"""The built-in solvers: DDIM against diffusers, Heun's accuracy, guidance, the solver contract."""

from __future__ import annotations

import pytest
import torch

from rewardkit.consistency import predicted_noise, predicted_origin
from rewardkit.backbones import Conditioning
from rewardkit.schedule import NoiseSchedule
from rewardkit.solvers import (
    ConsistencySolver,
    DDIMSolver,
    HeunSolver,
    make_guided_denoiser,
    make_two_call_guided_denoiser,
    teacher_denoiser,
)
from rewardkit.testing.solver_contract import check_solver, sd_alphas_cumprod

ABAR = sd_alphas_cumprod()
EPS = NoiseSchedule(ABAR, "epsilon")


def _ddim_scheduler(prediction_type: str):
    from diffusers import DDIMScheduler

    # "trailing" spacing gives exactly our grid 999, 979, ..., 19; set_alpha_to_one=False makes
    # the step from t=19 land on abar[0], as the skipping-step solver does.
    sched = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                          beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, timestep_spacing="trailing",
                          prediction_type=prediction_type)
    sched.set_timesteps(50)
    return sched


def _fake_teacher(z: torch.Tensor, t: torch.Tensor, embeds) -> torch.Tensor:
    """A smooth, prompt-dependent stand-in for a UNet: raw output from (z, t, embeds), the
    embeddings given bare or as a Conditioning."""
    embeds = getattr(embeds, "prompt_embeds", embeds)
    shape = (-1,) + (1,) * (z.ndim - 1)
    e = embeds.mean(dim=(1, 2)).view(shape)
    return torch.tanh(z * (1 + e)) + 0.3 * torch.cos(t.float() / 100).view(shape) * e


# ------------------------------------------------------------------------------ registration


def test_solvers_are_registered_and_build_through_the_api(fresh_host):
    from rewardkit import api

    for name, cls in (("ddim", DDIMSolver), ("heun", HeunSolver)):
        solver = api.solver(name, alphas_cumprod=ABAR, num_ddim_timesteps=50)
        assert type(solver) is cls and isinstance(solver, ConsistencySolver)
        assert solver.name == name
    assert DDIMSolver.evaluations_per_step == 1 and HeunSolver.evaluations_per_step == 2


def test_grid_is_the_skipping_step_grid():
    solver = DDIMSolver(ABAR, num_ddim_timesteps=50)
    assert solver.skip == 20
    assert solver.timesteps.tolist() == list(range(19, 1000, 20))
    index = torch.arange(50)
    assert solver.end_timesteps(index).tolist() == [0] + list(range(19, 980, 20))
    assert _ddim_scheduler("epsilon").timesteps.flip(0).tolist() == solver.timesteps.tolist()


# ----------------------------------------------------------------------- DDIM vs diffusers


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_step_matches_diffusers_ddim_scheduler_with_guidance(prediction_type):
    sched = _ddim_scheduler(prediction_type)
    solver = DDIMSolver(sched.alphas_cumprod, num_ddim_timesteps=50)
    g = torch.Generator().manual_seed(0)
    batch = 3
    cond = torch.randn(batch, 5, 8, generator=g)
    uncond = torch.zeros(batch, 5, 8)
    w = torch.tensor([0.0, 5.0, 12.5])
    denoise = teacher_denoiser(_fake_teacher, Conditioning(cond), Conditioning(uncond),
                               NoiseSchedule(sched.alphas_cumprod, prediction_type), w)
    worst = 0.0
    for index in range(50):
        t = int(solver.timesteps[index])
        z = torch.randn(batch, 4, 6, 6, generator=g) * 3
        ours = solver.step(denoise, z, torch.full((batch,), index))
        # diffusers' CFG with scale 1 + w on the raw outputs, then one DDIM step
        tt = torch.full((batch,), t)
        out_c, out_u = _fake_teacher(z, tt, cond), _fake_teacher(z, tt, uncond)
        guided = out_u + (1 + w).view(-1, 1, 1, 1) * (out_c - out_u)
        ref = sched.step(guided, t, z, eta=0.0).prev_sample
        worst = max(worst, (ours - ref).abs().max().item())
    assert worst < 1e-4, f"largest difference to diffusers' DDIMScheduler: {worst}"


def test_ddim_step_reaches_t0_on_the_last_index():
    solver = DDIMSolver(ABAR)
    x0, eps = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    out = solver.step(lambda z, t: (x0, eps), x0, torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(out, ABAR[0].sqrt().float() * x0 + (1 - ABAR[0]).sqrt().float() * eps)


@pytest.mark.parametrize("cls", [DDIMSolver, HeunSolver])
def test_half_precision_step_keeps_dtype_and_tracks_float32(cls):
    solver = cls(ABAR)
    g = torch.Generator().manual_seed(4)
    z = torch.randn(3, 4, 6, 6, generator=g)
    cond = torch.randn(3, 5, 8, generator=g)
    index = torch.tensor([0, 20, 49])

    def denoiser(dtype):
        return teacher_denoiser(_fake_teacher, Conditioning(cond.to(dtype)),
                                Conditioning(torch.zeros_like(cond, dtype=dtype)),
                                NoiseSchedule(ABAR, "epsilon"), torch.tensor([5.0, 7.0, 9.0]))

    full = solver.step(denoiser(torch.float32), z, index)
    half = solver.step(denoiser(torch.float16), z.half(), index)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), full, atol=0.1, rtol=0.02)


# --------------------------------------------------------------------------------- guidance


def test_guided_denoiser_is_the_lcm_combination():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(2, 4, 4, 4, generator=g)
    t = torch.tensor([39, 999])
    out_c, out_u = torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 4, 4, 4, generator=g)
    w = torch.tensor([2.0, 9.0])
    denoise = make_guided_denoiser(lambda zz, tt: torch.cat([out_c, out_u]),
                                   NoiseSchedule(ABAR, "v_prediction"), w)
    x0, eps = denoise(z, t)
    x0_c = predicted_origin(out_c, t, z, "v_prediction", ABAR)
    x0_u = predicted_origin(out_u, t, z, "v_prediction", ABAR)
    eps_c = predicted_noise(out_c, t, z, "v_prediction", ABAR)
    eps_u = predicted_noise(out_u, t, z, "v_prediction", ABAR)
    wv = w.view(-1, 1, 1, 1)
    torch.testing.assert_close(x0, x0_c + wv * (x0_c - x0_u))
    torch.testing.assert_close(eps, eps_c + wv * (eps_c - eps_u))
    # w = 0 is the conditional teacher alone
    x0_0, eps_0 = make_guided_denoiser(lambda zz, tt: torch.cat([out_c, out_u]),
                                       NoiseSchedule(ABAR, "v_prediction"), 0.0)(z, t)
    torch.testing.assert_close(x0_0, x0_c)
    torch.testing.assert_close(eps_0, eps_c)


@pytest.fixture(scope="module")
def tiny_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
        attention_head_dim=8, cross_attention_dim=16, norm_num_groups=32,
        use_linear_projection=True)
    return unet.eval().requires_grad_(False)


def test_batched_teacher_call_equals_two_calls_on_a_real_unet(tiny_unet):
    g = torch.Generator().manual_seed(6)
    cond, uncond = torch.randn(3, 7, 16, generator=g), torch.randn(3, 7, 16, generator=g)
    w = torch.tensor([5.0, 10.0, 15.0])
    calls: list[int] = []

    def unet_fn(z, t, embeds):
        calls.append(z.shape[0])
        embeds = getattr(embeds, "prompt_embeds", embeds)
        return tiny_unet(z, t, encoder_hidden_states=embeds).sample

    z = torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([19, 519, 999])
    with torch.no_grad():
        c, u = Conditioning(cond), Conditioning(uncond)
        x0_b, eps_b = teacher_denoiser(unet_fn, c, u, EPS, w, batched=True)(z, t)
        assert calls == [6]
        x0_s, eps_s = teacher_denoiser(unet_fn, c, u, EPS, w, batched=False)(z, t)
        assert calls == [6, 3, 3]
    # batch-size-dependent float rounding, amplified by (1 + w) / alpha_999 ~ 235 in x0
    torch.testing.assert_close(x0_b, x0_s, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(eps_b, eps_s, atol=1e-4, rtol=1e-4)
    # and through a solver step
    denoise_b = make_guided_denoiser(lambda zz, tt: unet_fn(zz, tt, torch.cat([cond, uncond])),
                                     EPS, w)
    denoise_s = make_two_call_guided_denoiser(lambda zz, tt: unet_fn(zz, tt, cond),
                                              lambda zz, tt: unet_fn(zz, tt, uncond), EPS, w)
    solver = DDIMSolver(ABAR)
    with torch.no_grad():
        index = torch.tensor([0, 25, 49])
        torch.testing.assert_close(solver.step(denoise_b, z, index), solver.step(denoise_s, z, index),
                                   atol=1e-3, rtol=1e-4)


# ---------------------------------------------------------------- Heun on an analytic ODE

MU, SD = 0.3, 0.5  # Gaussian data N(MU, SD^2) per element: the exact denoiser is known


def _gaussian_denoiser(solver: ConsistencySolver):
    def denoise(z, t):
        alpha, sigma = solver.alpha_sigma(t, z)
        x0 = MU + alpha * SD ** 2 / (alpha ** 2 * SD ** 2 + sigma ** 2) * (z - alpha * MU)
        return x0, (z - alpha * x0) / sigma
    return denoise


def _exact_flow(solver: ConsistencySolver, z, t_from, t_to):
    """The PF-ODE solution: (z/alpha - MU) / sqrt(SD^2 + (sigma/alpha)^2) is constant along it."""
    alpha, sigma = solver.alpha_sigma(t_from, z)
    alpha_to, sigma_to = solver.alpha_sigma(t_to, z)
    scale = torch.sqrt(SD ** 2 + (sigma_to / alpha_to) ** 2) / torch.sqrt(SD ** 2 + (sigma / alpha) ** 2)
    return alpha_to * (MU + (z / alpha - MU) * scale)


def test_heun_step_is_more_accurate_than_ddim_at_every_grid_index():
    ddim, heun = DDIMSolver(ABAR), HeunSolver(ABAR)
    g = torch.Generator().manual_seed(7)
    index = torch.arange(50)
    z = torch.randn(50, 1, 4, 4, generator=g, dtype=torch.float64) * 2
    exact = _exact_flow(ddim, z, ddim.start_timesteps(index), ddim.end_timesteps(index))
    err_ddim = (ddim.step(_gaussian_denoiser(ddim), z, index) - exact).flatten(1).abs().amax(1)
    err_heun = (heun.step(_gaussian_denoiser(heun), z, index) - exact).flatten(1).abs().amax(1)
    assert bool((err_heun < err_ddim / 4).all()), (err_heun / err_ddim).max()


def _trajectory_error(cls, n: int) -> float:
    solver = cls(ABAR, num_ddim_timesteps=n)
    z_T = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    z = z_T
    for index in reversed(range(n)):
        z = solver.step(_gaussian_denoiser(solver), z, torch.full((8,), index))
    exact = _exact_flow(solver, z_T, torch.full((8,), 999), torch.zeros(8, dtype=torch.long))
    return (z - exact).abs().max().item()


def test_convergence_orders_over_the_whole_trajectory():
    ddim = _trajectory_error(DDIMSolver, 25), _trajectory_error(DDIMSolver, 50)
    heun = _trajectory_error(HeunSolver, 25), _trajectory_error(HeunSolver, 50)
    assert heun[1] < ddim[1] / 10
    # halving the step: first order halves the error, second order quarters it
    assert 1.5 < ddim[0] / ddim[1] < 2.5
    assert heun[0] / heun[1] > 3.3


# ------------------------------------------------------------------------------ contract


@pytest.mark.parametrize("cls", [DDIMSolver, HeunSolver])
@pytest.mark.parametrize("n", [50, 8])
def test_builtin_solvers_pass_the_contract(cls, n):
    passed = check_solver(cls, num_ddim_timesteps=n)
    assert "exact_denoiser" in passed and "deterministic" in passed


def test_heun_passes_the_contract_when_abar0_is_one():
    abar = ABAR.clone()
    abar[0] = 1.0  # sigma(0) = 0: the last step falls back to Euler
    check_solver(HeunSolver, alphas_cumprod=abar)
    check_solver(HeunSolver(abar, num_ddim_timesteps=50))


class _LazySolver(DDIMSolver):
    name = "lazy"

    def step(self, denoise, z, index):  # forgets to move the latent
        denoise(z, self.start_timesteps(index))
        return z.clone()


class _MiscountedSolver(DDIMSolver):
    name = "miscounted"
    evaluations_per_step = 2


class _RandomSolver(DDIMSolver):
    name = "random"

    def step(self, denoise, z, index):
        return super().step(denoise, z, index) + 1e-3 * torch.randn_like(z)


@pytest.mark.parametrize("broken, message", [
    (_LazySolver, "misses the exact ODE solution"),
    (_MiscountedSolver, "evaluations_per_step"),
    (_RandomSolver, "exact ODE solution|deterministic"),
])
def test_contract_catches_broken_solvers(broken, message):
    with pytest.raises(AssertionError, match=message):
        check_solver(broken)
