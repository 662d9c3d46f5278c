"""Few-step consistency sampling of a student *during training*, with gradients through chosen steps.

:func:`sample_consistency` runs the same ``LCMScheduler`` chain as validation and as
``DiffusionPipeline.from_pretrained(saved_student)`` (same noise, same numbers, bit for bit), but on
a live UNet and a :class:`~rewardkit.backbones.Conditioning`, and it keeps the autograd graph
through the steps you choose. That is what reward fine-tuning through the sampler needs::

    x0 = sample_consistency(backbone, student, cond, steps=4, guidance_scale=7.5,
                            grad_steps="last 1", generator=torch.Generator().manual_seed(0))
    loss = -reward(backbone.decode_latents(x0), captions).mean()   # DRaFT-K with K = 1
    loss.backward()                                                  # reaches the student

Steps outside ``grad_steps`` run under ``torch.no_grad()`` (no activations kept); the chosen ones
keep the graph, optionally recomputing each UNet call in the backward pass
(``gradient_checkpointing=True``) to hold one step's activations at a time.

This lives apart from :mod:`rewardkit.sampling`, which samples *saved* pipeline folders into PIL
images for people (inference mode, batching, timing, the CLI); this module is a tensor-level
training building block with no pipeline, image or CLI dependency. Both are exported from
:mod:`rewardkit.sampling` and :mod:`rewardkit`.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from .backbones.conditioning import Conditioning
from .consistency import guidance_scale_embedding
from .errors import ConfigError
from .sampling_chain import chain_step, initial_noise_sigma, set_chain_timesteps

__all__ = ["sample_consistency", "resolve_grad_steps", "guidance_input"]

_LAST = re.compile(r"^\s*last\s+(\d+)\s*$")


def resolve_grad_steps(grad_steps: int | str | Iterable[int] | None, steps: int) -> tuple[int, ...]:
    """The sorted step indices (``0 .. steps-1``) that keep gradients.

    ``grad_steps`` is ``None``, ``()`` or ``"none"`` (no step), ``"all"``, ``"last K"`` (the last
    ``K`` steps: DRaFT-K), or step indices (an int or a sequence; negative ones count from the
    end, so ``-1`` is the last step). The chosen steps must be the last ones of the chain: a
    gradient reaches the output only through steps that every later step passes on, so a
    gradient step followed by a no-gradient step would keep its graph for nothing; such a choice
    raises :class:`~rewardkit.errors.ConfigError`.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be a positive integer, got {steps!r}")
    if grad_steps is None:
        return ()
    if isinstance(grad_steps, str):
        text = grad_steps.strip().lower()
        if text == "none":
            return ()
        if text == "all":
            return tuple(range(steps))
        match = _LAST.match(text)
        if match is None:
            raise ConfigError(f"grad_steps: {grad_steps!r} is not 'none', 'all', 'last K' or a "
                              "sequence of step indices")
        count = int(match.group(1))
        if count > steps:
            raise ConfigError(f"grad_steps: 'last {count}' of a {steps}-step chain; K is at most "
                              f"{steps}")
        return tuple(range(steps - count, steps))
    indices = [grad_steps] if isinstance(grad_steps, int) else list(grad_steps)
    chosen = set()
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, int) or not -steps <= index < steps:
            raise ConfigError(f"grad_steps: {index!r} is not a step index of a {steps}-step chain "
                              f"(0..{steps - 1}, or -{steps}..-1 from the end)")
        chosen.add(index % steps)
    ordered = tuple(sorted(chosen))
    if ordered and ordered != tuple(range(steps - len(ordered), steps)):
        raise ConfigError(f"grad_steps: steps {list(ordered)} of a {steps}-step chain are not its "
                          "last ones, so no gradient would reach the output through the earlier "
                          f"of them; use the last steps, e.g. 'last {steps - ordered[0]}'")
    return ordered


def guidance_input(guidance_scale: float, time_cond_proj_dim: int | None, batch: int,
                   device: torch.device | str, dtype: torch.dtype) -> torch.Tensor | None:
    """The student's guidance input for ``guidance_scale``: the embedding of
    ``w = guidance_scale - 1`` (as diffusers' pipelines give it), ``[batch, dim]``; ``None``
    for a UNet without guidance embedding (``time_cond_proj_dim`` unset)."""
    if not time_cond_proj_dim:
        return None
    w = torch.full((batch,), guidance_scale - 1.0)
    return guidance_scale_embedding(w, int(time_cond_proj_dim)).to(device=device, dtype=dtype)


def _unwrapped_config(unet: nn.Module) -> Any:
    while not hasattr(unet, "config"):
        inner = getattr(unet, "module", None) or getattr(unet, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return None
        unet = inner
    return unet.config


def sample_consistency(backbone: Any, unet: nn.Module, cond: Conditioning, *, steps: int = 4,
                       guidance_scale: float = 7.5,
                       grad_steps: int | str | Sequence[int] | None = None,
                       generator: torch.Generator | int | None = None,
                       time_cond_proj_dim: int | str | None = "auto",
                       original_inference_steps: int = 50, timestep_scaling: float = 10.0,
                       latents: torch.Tensor | None = None,
                       latent_size: int | Sequence[int] | None = None,
                       gradient_checkpointing: bool = False,
                       stop_after: int | None = None) -> torch.Tensor:
    """Sample ``unet`` for ``steps`` LCM steps and return the final x0 latents (scaled, as
    ``backbone.decode_latents`` takes them), with the graph kept through ``grad_steps``.

    The chain is ``backbone.lcm_scheduler(original_inference_steps, timestep_scaling)`` with
    ``steps`` timesteps: each step predicts x0 with the consistency boundary scalings and,
    except on the last, re-noises it to the next timestep with fresh noise from ``generator``.
    It computes exactly what :func:`rewardkit.sampling.sample_lcm_latents` and a
    diffusers pipeline with ``LCMScheduler`` compute for the same seed (tested bit for bit), with
    or without gradients.

    Args:
        backbone: the teacher's backbone (its scheduler, latent shape and ``predict``).
        unet: the student (plain, LoRA, DDP- or compile-wrapped). Its mode is left as it is.
        cond: the prompts' conditioning, ``backbone.encode_prompts(captions)``; one sample per row.
        steps: sampling steps (1, 2, 4, 8 ...).
        guidance_scale: the student's guidance input: it gets the embedding of
            ``w = guidance_scale - 1``, as diffusers' pipelines give it. A UNet without
            guidance embedding is sampled without classifier-free guidance.
        grad_steps: which steps keep gradients (see :func:`resolve_grad_steps`): ``"last K"``,
            ``"all"``, indices such as ``(1,)`` or ``(-1,)``, or ``None``/``()`` for none (the
            default: the result then carries no graph at all). The chosen steps keep their graph
            even inside an outer ``torch.no_grad()`` (not inside ``torch.inference_mode()``).
        generator: a ``torch.Generator`` (or an int seed for a fresh CPU one) drawing the initial
            noise and the re-noising; ``None`` uses torch's global generator. A CPU generator
            gives the same samples on every device.
        time_cond_proj_dim: the guidance embedding's width; ``"auto"`` reads the UNet's
            ``config.time_cond_proj_dim``, ``None`` passes no embedding.
        original_inference_steps: the LCM schedule's grid size (the recipes'
            ``num_ddim_timesteps``).
        timestep_scaling: the LCM boundary scalings' factor (the recipes'
            ``timestep_scaling_factor``).
        latents: the initial noise ``[B, C, h, w]`` (multiplied by the scheduler's
            ``init_noise_sigma``, as diffusers does); drawn from ``generator`` when ``None``. If
            it requires grad and the first step keeps gradients, the gradient reaches it too.
        latent_size: the latents' side (or ``(h, w)``) when they are drawn; default the
            teacher's native ``backbone.sample_size``.
        gradient_checkpointing: recompute each gradient step's UNet call during backward
            instead of keeping its activations (same values and gradients, less memory).
        stop_after: run only the first ``stop_after`` steps of the ``steps``-step chain and
            return that step's x0 prediction (ReFL's truncated chain); ``grad_steps`` then
            counts within the truncated chain. ``None``: the whole chain.

    Returns:
        ``[B, C, h, w]`` x0 latents in the UNet's dtype on ``cond``'s device; differentiable
        with respect to the UNet's trainable parameters through ``grad_steps``.
    """
    if stop_after is not None and not (isinstance(stop_after, int) and 1 <= stop_after <= steps):
        raise ConfigError(f"stop_after must be a step count in 1..{steps}, got {stop_after!r}")
    run = steps if stop_after is None else stop_after
    chosen = set(resolve_grad_steps(grad_steps, run))
    batch = len(cond)
    device = cond.prompt_embeds.device
    dtype = next(unet.parameters()).dtype
    if time_cond_proj_dim == "auto":
        config = _unwrapped_config(unet)
        time_cond_proj_dim = getattr(config, "time_cond_proj_dim", None) if config is not None else None
    if isinstance(generator, int) and not isinstance(generator, bool):
        generator = torch.Generator().manual_seed(generator)

    scheduler = backbone.lcm_scheduler(original_inference_steps, timestep_scaling)
    set_chain_timesteps(scheduler, steps, device, original_inference_steps)
    if latents is None:
        if latent_size is None:
            height = width = int(backbone.sample_size)
        elif isinstance(latent_size, int):
            height = width = latent_size
        else:
            height, width = (int(side) for side in latent_size)
        noise_device = generator.device if generator is not None else torch.device("cpu")
        latents = torch.randn((batch, backbone.latent_channels, height, width),
                              generator=generator, device=noise_device)
    elif latents.shape[0] != batch:
        raise ConfigError(f"latents have batch {latents.shape[0]}, the conditioning {batch}")
    latents = (latents * initial_noise_sigma(scheduler)).to(device=device, dtype=dtype)
    w_embedding = guidance_input(guidance_scale, time_cond_proj_dim, batch, device, dtype)
    cond = cond.to(dtype=dtype)

    def predict(sample: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return backbone.predict(unet, sample, timesteps, cond, w_embedding)

    denoised = latents
    for index, t in enumerate(scheduler.timesteps[:run]):
        keep = index in chosen
        with (torch.enable_grad() if keep else torch.no_grad()):
            timesteps = t.expand(batch).to(device)
            if keep and gradient_checkpointing:
                from torch.utils.checkpoint import checkpoint

                out = checkpoint(predict, latents, timesteps, use_reentrant=False)
            else:
                out = predict(latents, timesteps)
            # LCMScheduler re-noises with torch.randn(generator=...) on the generator's device
            latents, denoised = chain_step(scheduler, backbone.schedule, out, t, latents,
                                           generator)
            latents = latents.to(dtype)
    # the whole chain: its last latents (LCMScheduler's last x0 prediction, a flow scheduler's
    # last Euler step to s = 0); a truncated one: that step's x0 prediction
    return (latents if run == steps else denoised).to(dtype)

