"""Contract checks every consistency-solver plugin should pass: ``check_solver``.

A third-party solver author runs, in their own tests::

    from rewardkit.testing.solver_contract import check_solver
    from my_plugin import MySolver

    def test_contract():
        check_solver(MySolver)            # a factory(alphas_cumprod, num_ddim_timesteps=...) ...
        check_solver(MySolver(sd_alphas_cumprod(), num_ddim_timesteps=25))   # ... or an instance

Each check raises ``AssertionError`` with a message naming the solver and what went wrong:

- the grid: shape ``[N]``, integer, strictly increasing, inside ``[0, T)``; ``end_timesteps`` is
  in ``[0, start)`` and at most ``k`` below the start;
- ``step`` keeps shape and dtype (float32 and float64), returns finite values, runs under
  ``torch.inference_mode()`` (no gradients needed) and is deterministic;
- ``step`` calls the denoiser ``evaluations_per_step`` times with per-sample integer timesteps;
- exactness: with the exact denoiser of a point-mass data distribution (the ODE trajectory through
  ``z = alpha x0 + sigma eps`` keeps ``x0`` and ``eps`` fixed), every step, at every grid index,
  lands on ``alpha_prev x0 + sigma_prev eps``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..solvers.base import ConsistencySolver

__all__ = ["check_solver", "sd_alphas_cumprod"]


def sd_alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 0.00085,
                      beta_end: float = 0.012) -> torch.Tensor:
    """The Stable Diffusion 1.x/2.x ``scaled_linear`` schedule's ``abar`` (float64)."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps,
                           dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def _build(solver_or_factory: Any, alphas_cumprod: torch.Tensor,
           num_ddim_timesteps: int) -> ConsistencySolver:
    if isinstance(solver_or_factory, ConsistencySolver):
        return solver_or_factory
    solver = solver_or_factory(alphas_cumprod, num_ddim_timesteps=num_ddim_timesteps)
    assert isinstance(solver, ConsistencySolver), (
        f"{solver_or_factory!r} built {type(solver).__name__}, not a ConsistencySolver")
    # the recipes pass the backbone's NoiseSchedule, not a tensor: the factory must take both
    from ..schedule import NoiseSchedule

    from_schedule = solver_or_factory(NoiseSchedule(alphas_cumprod),
                                      num_ddim_timesteps=num_ddim_timesteps)
    assert torch.equal(from_schedule.timesteps, solver.timesteps) and torch.allclose(
        torch.as_tensor(from_schedule.alphas_cumprod).double(),
        torch.as_tensor(alphas_cumprod).double()), (
        f"{solver_or_factory!r} built from a NoiseSchedule differs from the one built from "
        "its alphas_cumprod tensor; pass alphas_cumprod on to ConsistencySolver.__init__")
    return solver


class _ExactDenoiser:
    """The exact denoiser when each sample's data distribution is a point mass at ``x0``.

    ``eps_hat = (z - alpha_t x0) / sigma_t``; it records its calls for the checks.
    """

    def __init__(self, solver: ConsistencySolver, x0: torch.Tensor, eps: torch.Tensor) -> None:
        self.solver, self.x0, self.eps = solver, x0, eps
        self.calls: list[tuple[tuple[int, ...], torch.Tensor]] = []

    def __call__(self, z: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls.append((tuple(z.shape), torch.as_tensor(t).detach().clone()))
        alpha, sigma = self.solver.alpha_sigma(torch.as_tensor(t).long(), z)
        eps = torch.where(sigma > 0, (z - alpha * self.x0) / sigma.clamp(min=1e-12), self.eps)
        return self.x0.to(z.dtype), eps.to(z.dtype)


def check_solver(solver_or_factory: ConsistencySolver | Callable[..., ConsistencySolver],
                 *, alphas_cumprod: torch.Tensor | None = None, num_ddim_timesteps: int = 50,
                 latent_shape: tuple[int, ...] = (4, 8, 8), seed: int = 0,
                 rtol: float = 1e-4) -> list[str]:
    """Run the solver contract on an instance or a factory; return the names of the passed checks.

    A factory is called as ``factory(alphas_cumprod, num_ddim_timesteps=num_ddim_timesteps)``
    (``alphas_cumprod`` defaults to :func:`sd_alphas_cumprod`). ``rtol`` bounds the error of the
    exactness check relative to the latents' scale (float32 arithmetic).
    """
    if alphas_cumprod is None:
        alphas_cumprod = sd_alphas_cumprod()
    solver = _build(solver_or_factory, alphas_cumprod, num_ddim_timesteps)
    label = f"solver {getattr(solver, 'name', type(solver).__name__)!r}"
    passed: list[str] = []

    # -- identity and cost accounting
    assert isinstance(solver.name, str) and solver.name, f"{label}: name must be a non-empty str"
    assert isinstance(solver.evaluations_per_step, int) and solver.evaluations_per_step >= 1, (
        f"{label}: evaluations_per_step must be an int >= 1, got {solver.evaluations_per_step!r}")
    passed.append("identity")

    # -- the grid
    grid = solver.timesteps
    n, total = solver.num_ddim_timesteps, solver.num_train_timesteps
    assert grid.shape == (n,), f"{label}: timesteps has shape {tuple(grid.shape)}, expected ({n},)"
    assert not grid.is_floating_point(), f"{label}: timesteps must be integers, got {grid.dtype}"
    assert bool((grid[1:] > grid[:-1]).all()), f"{label}: timesteps must increase strictly"
    assert int(grid.min()) >= 0 and int(grid.max()) < total, (
        f"{label}: timesteps must lie in [0, {total}), got [{int(grid.min())}, {int(grid.max())}]")
    indices = torch.arange(n)
    start, end = solver.start_timesteps(indices), solver.end_timesteps(indices)
    assert torch.equal(start, grid), f"{label}: start_timesteps(arange(N)) must equal the grid"
    assert bool((end >= 0).all()), f"{label}: end_timesteps must be >= 0"
    assert bool((end < start).all()), f"{label}: end_timesteps must lie below start_timesteps"
    assert bool((start - end <= solver.skip).all()), (
        f"{label}: end_timesteps may lie at most skip={solver.skip} below the start")
    drawn = solver.sample_indices(256, generator=torch.Generator().manual_seed(seed))
    assert drawn.shape == (256,) and int(drawn.min()) >= 0 and int(drawn.max()) < n, (
        f"{label}: sample_indices must draw integers in [0, {n})")
    passed.append("grid")

    # -- exactness, shape, dtype, call accounting, at every grid index (mixed per-sample batch)
    generator = torch.Generator().manual_seed(seed)
    index = torch.cat([indices, indices.flip(0)[: max(1, n // 4)]])
    batch = index.shape[0]
    for dtype in (torch.float32, torch.float64):
        x0 = torch.randn((batch, *latent_shape), generator=generator, dtype=torch.float64).to(dtype)
        eps = torch.randn((batch, *latent_shape), generator=generator, dtype=torch.float64).to(dtype)
        alpha, sigma = solver.alpha_sigma(solver.start_timesteps(index), x0)
        z = alpha * x0 + sigma * eps
        denoiser = _ExactDenoiser(solver, x0, eps)
        with torch.inference_mode():
            out = solver.step(denoiser, z, index)
        assert isinstance(out, torch.Tensor) and out.shape == z.shape, (
            f"{label}: step returned shape {tuple(getattr(out, 'shape', ()))}, expected {tuple(z.shape)}")
        assert out.dtype == dtype, f"{label}: step returned {out.dtype} for {dtype} latents"
        assert bool(torch.isfinite(out).all()), f"{label}: step returned non-finite values"
        assert len(denoiser.calls) == solver.evaluations_per_step, (
            f"{label}: step called the denoiser {len(denoiser.calls)} times, but "
            f"evaluations_per_step = {solver.evaluations_per_step}")
        for shape, t in denoiser.calls:
            assert shape == tuple(z.shape), f"{label}: denoiser got latents of shape {shape}"
            assert t.shape == (batch,) and not t.is_floating_point(), (
                f"{label}: denoiser must get one integer timestep per sample, got {tuple(t.shape)} {t.dtype}")
            assert int(t.min()) >= 0 and int(t.max()) < total, (
                f"{label}: denoiser got timesteps outside [0, {total})")
        alpha_prev, sigma_prev = solver.alpha_sigma(solver.end_timesteps(index), x0)
        exact = alpha_prev * x0 + sigma_prev * eps
        error = (out - exact).abs().max().item()
        tolerance = rtol * max(1.0, exact.abs().max().item())
        assert error <= tolerance, (
            f"{label}: with the exact denoiser, step misses the exact ODE solution "
            f"alpha_prev*x0 + sigma_prev*eps by {error:.3g} (> {tolerance:.3g}) in {dtype}")
    passed += ["shape_dtype", "evaluations", "exact_denoiser", "no_grad"]

    # -- deterministic
    def denoise_smooth(zz: torch.Tensor, tt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale = solver.alpha_sigma(tt, zz)[0]
        return torch.tanh(zz) * scale, torch.sin(zz)

    z = torch.randn((4, *latent_shape), generator=generator)
    index = torch.tensor([0, n // 3, n // 2, n - 1])
    with torch.inference_mode():
        first, second = solver.step(denoise_smooth, z, index), solver.step(denoise_smooth, z, index)
    assert torch.equal(first, second), f"{label}: step is not deterministic"
    passed.append("deterministic")
    return passed
