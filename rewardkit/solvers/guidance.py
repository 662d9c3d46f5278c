"""Classifier-free guidance inside the solver, in the LCM formulation.

A solver only sees a *denoiser* ``denoise(z_t, t) -> (x0_hat, eps_hat)``. These helpers build one
from the teacher: the teacher runs on the conditional and the unconditional (empty-prompt)
embeddings, both raw outputs are turned into (x0, eps) estimates, and the two are combined as

    x0_hat = x0_c + w (x0_c - x0_u),    eps_hat = eps_c + w (eps_c - eps_u)

with one ``w`` per sample (``w ~ U[w_min, w_max]`` in training). This is diffusers'/Imagen CFG
with scale ``1 + w``; since DDIM is linear in (x0, eps) it equals the augmented PF-ODE step
``z + (1 + w) Psi(c) - w Psi(0)`` of the paper.

Two ways to call the teacher:

- :func:`make_guided_denoiser`: **one batched call** on ``[z; z]`` with ``[prompt; uncond]``
  conditioning (the default, the standard GPU trick);
- :func:`make_two_call_guided_denoiser`: two calls of batch ``B`` (less peak memory).

:func:`teacher_denoiser` builds either from a ``unet_fn(z, t, cond)``.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..backbones.conditioning import Conditioning
from ..noise_process import NoiseProcess
from .base import Denoiser

#: ``predict_fn(z, t) -> raw teacher output`` (``z`` and ``t`` have the same batch size).
PredictFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``unet_fn(z, t, cond) -> raw teacher output`` (``cond``: a backbone's ``Conditioning``).
UnetFn = Callable[[torch.Tensor, torch.Tensor, Conditioning], torch.Tensor]


def combine_guidance(cond: torch.Tensor, uncond: torch.Tensor,
                     w: torch.Tensor | float) -> torch.Tensor:
    """``cond + w (cond - uncond)`` with ``w`` a float or one value per sample (LCM formulation)."""
    w = torch.as_tensor(w, device=cond.device)
    if w.ndim > 0:
        w = w.reshape((-1,) + (1,) * (cond.ndim - 1))
    return cond + w.to(cond.dtype) * (cond - uncond)


def _estimates(output: torch.Tensor, t: torch.Tensor, z: torch.Tensor,
               schedule: NoiseProcess) -> tuple[torch.Tensor, torch.Tensor]:
    return schedule.predicted_origin(output, t, z), schedule.predicted_noise(output, t, z)


def _timesteps_for(t: torch.Tensor | int | float, z: torch.Tensor) -> torch.Tensor:
    """``t`` per sample: integer DDPM timesteps stay int64, a flow's model times stay float."""
    t = torch.as_tensor(t, device=z.device)
    if not t.is_floating_point():
        t = t.long()
    return t.expand(z.shape[0]) if t.ndim == 0 else t


def make_guided_denoiser(predict_fn: PredictFn, schedule: NoiseProcess,
                         w: torch.Tensor | float) -> Denoiser:
    """A guided denoiser that runs the teacher **once** on the doubled batch.

    ``predict_fn(z2, t2)`` receives ``z2 = [z; z]`` and ``t2 = [t; t]`` (batch ``2B``) and must
    return the teacher's raw outputs for ``[cond; uncond]`` (the caller binds the concatenated
    conditioning). ``schedule`` is the teacher's noise process (``backbone.schedule``: it turns
    raw outputs into estimates), ``w`` the guidance scale(s), shape ``[B]``.
    """

    def denoise(z: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = _timesteps_for(t, z)
        output = predict_fn(torch.cat([z, z]), torch.cat([t, t]))
        out_c, out_u = output.chunk(2)
        x0_c, eps_c = _estimates(out_c, t, z, schedule)
        x0_u, eps_u = _estimates(out_u, t, z, schedule)
        return combine_guidance(x0_c, x0_u, w), combine_guidance(eps_c, eps_u, w)

    return denoise


def make_two_call_guided_denoiser(predict_cond: PredictFn, predict_uncond: PredictFn,
                                  schedule: NoiseProcess, w: torch.Tensor | float) -> Denoiser:
    """The same guided denoiser as :func:`make_guided_denoiser`, with two teacher calls of batch B.

    ``predict_cond(z, t)`` and ``predict_uncond(z, t)`` run the teacher with the prompt and the
    empty-prompt embeddings respectively.
    """

    def denoise(z: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = _timesteps_for(t, z)
        x0_c, eps_c = _estimates(predict_cond(z, t), t, z, schedule)
        x0_u, eps_u = _estimates(predict_uncond(z, t), t, z, schedule)
        return combine_guidance(x0_c, x0_u, w), combine_guidance(eps_c, eps_u, w)

    return denoise


def teacher_denoiser(unet_fn: UnetFn, cond: Conditioning, uncond: Conditioning,
                     schedule: NoiseProcess, w: torch.Tensor | float,
                     batched: bool = True) -> Denoiser:
    """A guided denoiser from ``unet_fn(z, t, cond)``, batched (one call on ``[cond; uncond]``)
    or not (two calls).

    Typical ``unet_fn``: ``lambda z, t, c: backbone.predict(backbone.unet, z, t, c)``. The caller
    is responsible for ``torch.no_grad()`` (the teacher never needs gradients).
    """
    if batched:
        both = Conditioning.cat([cond, uncond])
        return make_guided_denoiser(lambda z, t: unet_fn(z, t, both), schedule, w)
    return make_two_call_guided_denoiser(lambda z, t: unet_fn(z, t, cond),
                                         lambda z, t: unet_fn(z, t, uncond), schedule, w)
