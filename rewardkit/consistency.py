"""The arithmetic of latent consistency distillation (LCD), shared by every recipe and solver.

Everything here follows the RG-LCD reference code (Ji4chenLi/rg-lcd, ``common_utils.py`` and
``train_lcm_distill_sd_wds.py``):

- the noise schedule view ``z_t = alpha_t x0 + sigma_t eps`` with ``alpha_t = sqrt(abar_t)`` and
  ``sigma_t = sqrt(1 - abar_t)``;
- the teacher's x0- and eps-estimates from its raw output for the ``epsilon``, ``v_prediction`` and
  ``sample`` parametrisations;
- the consistency function ``f(z, t) = c_skip(t) z + c_out(t) x0_hat`` with its boundary-condition
  scalings;
- the guidance-scale embedding fed to the student as ``timestep_cond``;
- the consistency distance (pseudo-Huber or L2) and the EMA target update.

All functions take a per-sample batch of integer DDPM timesteps ``t`` (shape ``[B]``; a 0-d tensor
or a Python int is broadcast) and return tensors in the dtype of the latents they are given.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from .errors import ConfigError
from .lcm_boundary import consistency_output, scalings_for_boundary_conditions
from .schedule import PREDICTION_TYPES, NoiseSchedule

__all__ = [
    "PREDICTION_TYPES",
    "LOSS_TYPES",
    "scalings_for_boundary_conditions",
    "predicted_origin",
    "predicted_noise",
    "consistency_output",
    "guidance_scale_embedding",
    "consistency_distance",
    "ema_update",
    "EMAUpdater",
]

#: The consistency distances :func:`consistency_distance` implements (``loss_type``).
LOSS_TYPES: tuple[str, ...] = ("huber", "l2")


# ------------------------------------------------------------------ teacher parametrisations


def predicted_origin(model_output: torch.Tensor, timesteps: torch.Tensor | int,
                     sample: torch.Tensor, prediction_type: str,
                     alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The x0-estimate ``x0_hat`` from the teacher's raw output (see
    :meth:`rewardkit.schedule.NoiseSchedule.predicted_origin`, which the training step uses
    through the backbone's cached schedule; this is the same maths for loose values)."""
    return NoiseSchedule(alphas_cumprod, prediction_type).predicted_origin(
        model_output, timesteps, sample)


def predicted_noise(model_output: torch.Tensor, timesteps: torch.Tensor | int,
                    sample: torch.Tensor, prediction_type: str,
                    alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The noise estimate ``eps_hat`` from the teacher's raw output (see
    :meth:`rewardkit.schedule.NoiseSchedule.predicted_noise`)."""
    return NoiseSchedule(alphas_cumprod, prediction_type).predicted_noise(
        model_output, timesteps, sample)


# ----------------------------------------------------------------------- guidance embedding


def guidance_scale_embedding(w: torch.Tensor, embedding_dim: int = 256,
                             dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The student's guidance-scale embedding of ``w`` (VDM sinusoids).

    ``w' = 1000 w``, ``half = d // 2``, ``freq_j = exp(-j ln(10000) / (half - 1))``,
    ``emb = [sin(w' freq), cos(w' freq)]``, zero-padded by one column when ``d`` is odd. Computed
    in float32 and cast to ``dtype`` (as diffusers' LCM pipeline does at inference, which embeds
    ``guidance_scale - 1`` with its ``get_guidance_scale_embedding``). ``w`` has shape ``[B]``.
    """
    w = torch.as_tensor(w)
    if w.ndim != 1:
        raise ValueError(f"guidance_scale_embedding expects w of shape [B], got {tuple(w.shape)}")
    if embedding_dim < 4:
        raise ConfigError(f"time_cond_proj_dim (embedding_dim) must be at least 4, got {embedding_dim}")
    half = embedding_dim // 2
    scale = math.log(10000.0) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=w.device) * -scale)
    angles = (w.to(torch.float32) * 1000.0)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if embedding_dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb.to(dtype)


# ------------------------------------------------------------------------ loss and target


def consistency_distance(a: torch.Tensor, b: torch.Tensor, loss_type: str = "huber",
                         huber_c: float = 0.001) -> torch.Tensor:
    """The consistency distance ``d(a, b)``, a scalar in float32.

    ``huber``: pseudo-Huber ``mean(sqrt((a - b)^2 + c^2) - c)`` over all elements;
    ``l2``: mean squared error. The student output goes in ``a`` (it carries the gradient).
    """
    if loss_type not in LOSS_TYPES:
        raise ConfigError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, got {loss_type!r}")
    if a.shape != b.shape:
        raise ValueError(f"consistency_distance: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    diff = a.float() - b.float()
    if loss_type == "l2":
        return diff.pow(2).mean()
    if huber_c <= 0:
        raise ConfigError(f"huber_c must be positive, got {huber_c}")
    return (torch.sqrt(diff.pow(2) + huber_c ** 2) - huber_c).mean()


def _unwrap(module: nn.Module) -> nn.Module:
    """The module inside DDP/DataParallel (accelerate wraps the student in these)."""
    while isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        module = module.module
    return module


class EMAUpdater:
    """``target <- decay * target + (1 - decay) * source``, with the tensor lists built once.

    Matches parameters and buffers by name when built (a mismatch raises ``ValueError``), then
    each :meth:`update` is two ``torch._foreach`` calls over the floating tensors (the same
    ``mul_`` then ``add_`` per element as a loop, so the same bits) and one ``_foreach_copy_``
    for the rest (counters), instead of a Python loop with a device copy per tensor (tensors
    on another device or dtype than the target's are still cast one by one). Both modules must
    keep their tensors (in-place loads, as resuming does, are fine).

    ``master(param)``, when given, returns the full-precision value of a source parameter whose
    dtype is not the target's: the source is then a low-precision copy of weights kept in fp32
    elsewhere (DeepSpeed with bf16/fp16 keeps them in its optimiser; see
    :func:`rewardkit.training.runtime.fp32_master_weights`), and the target averages those
    rather than the rounded copy. It is called on every update, for the same parameters in the
    same order.
    """

    def __init__(self, target: nn.Module, source: nn.Module,
                 master: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        target, source = _unwrap(target), _unwrap(source)
        self.master = master
        self.floats: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        self.others: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        self.converted: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.mastered: list[tuple[torch.Tensor, torch.Tensor]] = []
        for kind, target_items, source_items in (
            ("parameter", target.named_parameters(), dict(source.named_parameters())),
            ("buffer", target.named_buffers(), dict(source.named_buffers())),
        ):
            for name, tensor in target_items:
                if name not in source_items:
                    raise ValueError(f"ema_update: source has no {kind} {name!r} (target and "
                                     "source must have the same architecture)")
                src = source_items[name]
                if src.shape != tensor.shape:
                    raise ValueError(f"ema_update: {kind} {name!r} has shape {tuple(src.shape)} "
                                     f"in the source but {tuple(tensor.shape)} in the target")
                if (master is not None and kind == "parameter" and src.dtype != tensor.dtype
                        and tensor.is_floating_point()):
                    self.mastered.append((tensor, src))  # read through master on every update
                    continue
                if src.device != tensor.device or src.dtype != tensor.dtype:
                    self.converted.append((tensor, src))  # cast on every update
                    continue
                pair = self.floats if tensor.is_floating_point() else self.others
                pair[0].append(tensor)
                pair[1].append(src)

    @torch.no_grad()
    def update(self, decay: float) -> None:
        """One EMA step with ``decay`` (``0``: copy the source, ``1``: keep the target)."""
        if not 0.0 <= decay <= 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1], got {decay}")
        targets, sources = self.floats
        if targets:
            torch._foreach_mul_(targets, decay)
            torch._foreach_add_(targets, sources, alpha=1.0 - decay)
        if self.others[0]:
            torch._foreach_copy_(self.others[0], self.others[1])
        for tensor, src in self.mastered:  # a low-precision copy: average its fp32 master
            value = self.master(src).to(device=tensor.device, dtype=tensor.dtype)
            tensor.mul_(decay).add_(value, alpha=1.0 - decay)
        for tensor, src in self.converted:  # another device or dtype than the target's
            src = src.detach().to(device=tensor.device, dtype=tensor.dtype)
            if tensor.is_floating_point():
                tensor.mul_(decay).add_(src, alpha=1.0 - decay)
            else:
                tensor.copy_(src)


def ema_update(target: nn.Module, source: nn.Module, decay: float) -> None:
    """In place ``target <- decay * target + (1 - decay) * source`` (the EMA target).

    Matches parameters and buffers by name. Floating-point buffers (e.g. norm statistics) are
    averaged like parameters; other buffers (counters) are copied. ``decay = 0`` copies ``source``
    exactly, ``decay = 1`` leaves ``target`` unchanged. Runs without autograd. A training loop
    builds an :class:`EMAUpdater` once instead (the same arithmetic, lists cached).
    """
    if not 0.0 <= decay <= 1.0:
        raise ConfigError(f"ema_decay must be in [0, 1], got {decay}")
    EMAUpdater(target, source).update(decay)
