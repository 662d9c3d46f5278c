"""The LCD arithmetic of rewardkit.consistency, checked against formulas and against diffusers."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from rewardkit.consistency import (
    consistency_distance,
    consistency_output,
    ema_update,
    guidance_scale_embedding,
    predicted_noise,
    predicted_origin,
    scalings_for_boundary_conditions,
)
from rewardkit.errors import ConfigError
from rewardkit.testing.solver_contract import sd_alphas_cumprod


@pytest.fixture(scope="module")
def ddpm():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear")


# ----------------------------------------------------------------------- boundary scalings


def test_scalings_follow_the_formula_and_hit_the_boundary():
    t = torch.tensor([0, 1, 19, 500, 999])
    c_skip, c_out = scalings_for_boundary_conditions(t)
    assert c_skip.dtype == torch.float32 and c_skip.shape == t.shape
    assert c_skip[0].item() == 1.0 and c_out[0].item() == 0.0
    for i, step in enumerate(t.tolist()):
        scaled = 10.0 * step
        assert c_skip[i].item() == pytest.approx(0.25 / (scaled ** 2 + 0.25), rel=1e-6)
        assert c_out[i].item() == pytest.approx(scaled / math.sqrt(scaled ** 2 + 0.25), rel=1e-6)
    # t=19 is already almost pure x0
    assert c_skip[2].item() < 1e-5 and c_out[2].item() > 0.99999
    # other sigma_data / scaling
    c_skip, c_out = scalings_for_boundary_conditions(torch.tensor([3]), sigma_data=1.0,
                                                     timestep_scaling=1.0)
    assert c_skip.item() == pytest.approx(0.1) and c_out.item() == pytest.approx(3 / math.sqrt(10))


def test_consistency_output_boundary_condition_is_exact():
    g = torch.Generator().manual_seed(0)
    z, x0 = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    t = torch.tensor([0, 19, 999])
    out = consistency_output(z, x0, t)
    assert torch.equal(out[0], z[0])  # f(z, 0) = z exactly
    c_skip, c_out = scalings_for_boundary_conditions(t)
    for i in (1, 2):
        torch.testing.assert_close(out[i], c_skip[i] * z[i] + c_out[i] * x0[i])
    assert torch.equal(consistency_output(z, x0, 0), z)  # a scalar timestep broadcasts


def test_consistency_output_keeps_dtype_and_gradient():
    z = torch.randn(2, 4, 3, 3).half()
    x0 = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = consistency_output(z, x0.half(), torch.tensor([19, 400]))
    assert out.dtype == torch.float16
    out.float().sum().backward()
    assert x0.grad is not None and x0.grad.abs().sum() > 0


# --------------------------------------------------------------- teacher parametrisations


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_predicted_origin_and_noise_invert_the_forward_process(ddpm, prediction_type):
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(4, 4, 6, 6, generator=g), torch.randn(4, 4, 6, 6, generator=g)
    t = torch.tensor([0, 19, 500, 999])
    z = ddpm.add_noise(x0, eps, t)  # diffusers' alpha_t x0 + sigma_t eps
    output = {"epsilon": eps, "sample": x0,
              "v_prediction": ddpm.get_velocity(x0, eps, t)}[prediction_type]
    abar = ddpm.alphas_cumprod
    torch.testing.assert_close(predicted_origin(output, t, z, prediction_type, abar), x0,
                               atol=2e-4, rtol=1e-4)
    # the last sample (t=999) has alpha ~ 0.07: eps/x0 from x0/eps amplifies float error there
    got_eps = predicted_noise(output, t, z, prediction_type, abar)
    torch.testing.assert_close(got_eps[1:], eps[1:], atol=2e-4, rtol=1e-4)


def test_predicted_origin_matches_diffusers_ddim_for_v_prediction():
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          prediction_type="v_prediction", clip_sample=False)
    sched.set_timesteps(50)
    g = torch.Generator().manual_seed(2)
    z, out = torch.randn(1, 4, 4, 4, generator=g), torch.randn(1, 4, 4, 4, generator=g)
    t = int(sched.timesteps[10])
    ref = sched.step(out, t, z).pred_original_sample
    torch.testing.assert_close(
        predicted_origin(out, torch.tensor([t]), z, "v_prediction", sched.alphas_cumprod), ref)


def test_predicted_origin_half_precision_and_bad_type():
    abar = sd_alphas_cumprod()
    z, out = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    t = torch.tensor([999, 10])
    half = predicted_origin(out.half(), t, z.half(), "epsilon", abar)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), predicted_origin(out, t, z, "epsilon", abar),
                               atol=2e-2, rtol=2e-3)
    with pytest.raises(ConfigError, match="prediction_type"):
        predicted_origin(out, t, z, "flow", abar)
    with pytest.raises(ConfigError, match="prediction_type"):
        predicted_noise(out, t, z, "x0", abar)


# ---------------------------------------------------------------------- guidance embedding


@pytest.mark.parametrize("dim", [256, 255, 32])
def test_guidance_embedding_matches_diffusers_lcm_pipeline(dim):
    from diffusers import LatentConsistencyModelPipeline

    w = torch.tensor([0.0, 1.0, 5.0, 7.37, 15.0])
    ours = guidance_scale_embedding(w, embedding_dim=dim)
    ref = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, embedding_dim=dim)
    assert ours.shape == (5, dim) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, atol=0, rtol=0)
    if dim % 2:
        assert torch.equal(ours[:, -1], torch.zeros(5))
    # w = 0 gives sin = 0, cos = 1
    half = dim // 2
    assert torch.equal(ours[0, :half], torch.zeros(half))
    assert torch.equal(ours[0, half:2 * half], torch.ones(half))


def test_guidance_embedding_dtype_is_a_cast_of_the_float32_embedding():
    w = torch.rand(4) * 10 + 5
    emb = guidance_scale_embedding(w, 64, dtype=torch.float16)
    assert emb.dtype == torch.float16
    assert torch.equal(emb, guidance_scale_embedding(w, 64).half())
    with pytest.raises(ValueError, match=r"\[B\]"):
        guidance_scale_embedding(torch.ones(2, 2))


# -------------------------------------------------------------------------------- distance


def test_pseudo_huber_values():
    c = 0.001
    diffs = [0.0, 5e-4, -0.003, 0.5, -2.0]
    a = torch.tensor(diffs).view(1, 5, 1, 1)
    b = torch.zeros_like(a)
    expected = sum(math.sqrt(d * d + c * c) - c for d in diffs) / len(diffs)
    got = consistency_distance(a, b, "huber", huber_c=c)
    assert got.dtype == torch.float32 and got.ndim == 0
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # small differences are quadratic (d^2 / 2c), large ones linear (|d| - c)
    small = consistency_distance(torch.tensor([1e-5]), torch.tensor([0.0]), huber_c=c)
    assert small.item() == pytest.approx(1e-10 / (2 * c), rel=1e-2)
    large = consistency_distance(torch.tensor([3.0]), torch.tensor([0.0]), huber_c=c)
    assert large.item() == pytest.approx(3.0 - c, rel=1e-6)
    assert consistency_distance(a, a).item() == 0.0


def test_l2_distance_half_inputs_and_gradient():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(2, 4, 3, 3, generator=g, requires_grad=True)
    b = torch.randn(2, 4, 3, 3, generator=g)
    l2 = consistency_distance(a, b, "l2")
    torch.testing.assert_close(l2, torch.nn.functional.mse_loss(a, b))
    l2.backward()
    assert a.grad is not None
    half = consistency_distance(a.detach().half(), b.half(), "huber")
    assert half.dtype == torch.float32


def test_distance_rejects_unknown_loss_type_and_shape_mismatch():
    a = torch.zeros(2, 3)
    with pytest.raises(ConfigError, match="loss_type"):
        consistency_distance(a, a, "l1")
    with pytest.raises(ValueError, match="shapes differ"):
        consistency_distance(a, torch.zeros(3, 2))


# ------------------------------------------------------------------------------------- EMA


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    net.train()
    net(torch.randn(8, 3))  # move the running stats away from their init
    return net


def test_ema_update_averages_parameters_and_float_buffers():
    target, source = _net(0), _net(1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    src = {k: v.clone() for k, v in source.state_dict().items()}
    ema_update(target, source, 0.95)
    after = target.state_dict()
    for key, value in after.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.95 * before[key] + 0.05 * src[key])
        else:  # num_batches_tracked is copied
            assert torch.equal(value, src[key])
    assert all(p.grad is None for p in target.parameters())
    assert all(p.grad_fn is None for p in target.parameters())
    # the source is untouched
    assert all(torch.equal(v, src[k]) for k, v in source.state_dict().items())


def test_ema_update_extremes_and_errors():
    target, source = _net(0), _net(1)
    frozen = {k: v.clone() for k, v in target.state_dict().items()}
    ema_update(target, source, 1.0)
    assert all(torch.equal(v, frozen[k]) for k, v in target.state_dict().items())
    ema_update(target, source, 0.0)
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in target.state_dict().items())
    with pytest.raises(ConfigError, match="ema_decay"):
        ema_update(target, source, 1.5)
    with pytest.raises(ValueError, match="no parameter"):
        ema_update(nn.Sequential(nn.Linear(3, 4)), nn.Linear(3, 4), 0.5)
    with pytest.raises(ValueError, match="shape"):
        ema_update(nn.Linear(3, 4), nn.Conv2d(3, 4, 1), 0.5)


def test_ema_update_works_while_grad_is_enabled_on_requires_grad_params():
    target, source = nn.Linear(2, 2), nn.Linear(2, 2)
    assert target.weight.requires_grad
    ema_update(target, source, 0.5)  # in-place on leaves that require grad: must not raise
    loss = target(torch.ones(1, 2)).sum()
    loss.backward()
    assert target.weight.grad is not None


def test_the_cached_ema_updater_gives_the_loop_s_bits_and_follows_in_place_loads():
    from rewardkit.consistency import EMAUpdater

    torch.manual_seed(0)
    source, target = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5)), nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5))
    expected = {n: t.detach().clone() for n, t in target.state_dict().items()}
    src = source.state_dict()
    for n, t in expected.items():
        if t.is_floating_point():
            t.mul_(0.9).add_(src[n], alpha=0.1)
        else:
            t.copy_(src[n])
    updater = EMAUpdater(target, source)
    updater.update(0.9)
    for n, t in target.state_dict().items():
        assert torch.equal(t, expected[n]), n
    with torch.no_grad():  # an in-place load of the source (as a resume does) is seen
        source[0].weight.fill_(2.0)
    updater.update(0.0)
    assert torch.equal(target[0].weight, torch.full_like(target[0].weight, 2.0))


def test_the_ema_updater_averages_the_masters_of_a_low_precision_source():
    """DeepSpeed with bf16 trains a bf16 copy and keeps the fp32 weights in its optimiser: the
    target must average those (read through ``master``), not the rounded copy."""
    from rewardkit.consistency import EMAUpdater

    torch.manual_seed(0)
    target = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5))
    fp32 = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5)).requires_grad_(False)
    fp32[0].weight.add_(1e-4)  # a step below bf16's resolution
    source = copy.deepcopy(fp32).to(torch.bfloat16)
    masters = {id(p): m for p, m in zip(source.parameters(), fp32.parameters())}
    read = []

    def master(param):
        read.append(id(param))
        return masters[id(param)]

    expected = {n: t.detach().clone() for n, t in target.state_dict().items()}
    for n, t in expected.items():
        value = dict(fp32.named_parameters()).get(n)
        if value is None:  # buffers have no master: the bf16 copy, cast
            value = source.state_dict()[n].to(t.dtype)
        if t.is_floating_point():
            t.mul_(0.9).add_(value, alpha=0.1)
        else:
            t.copy_(value)
    updater = EMAUpdater(target, source, master=master)
    updater.update(0.9)
    for n, t in target.state_dict().items():
        assert torch.equal(t, expected[n]), n
    assert read == [id(p) for p in source.parameters()]  # every parameter, in order, once
    rounded = copy.deepcopy(target)
    EMAUpdater(rounded, source).update(0.0)  # without masters: the bf16 copy, cast
    assert not torch.equal(rounded[0].weight, fp32[0].weight)
    EMAUpdater(target, source, master=master).update(0.0)
    assert torch.equal(target[0].weight, fp32[0].weight)
