"""The calls a training step makes of each model, as runs the profiles measure
(:func:`rewardkit.plan.profiles.measure`).

Each ``*_run`` function builds its module (in the active device / tensor mode) and returns
``run(batch, side, tracker)``: ``side`` is the latent side, so images are ``side * factor``
pixels (the VAE's downscale factor, :func:`vae_factor`: 8 for every SD VAE). The
calls mirror rewardkit's own: the student and teacher through ``Backbone.predict``'s UNet call
(fp32 inputs, under autocast in the mixed-precision dtype), the VAE through ``decode_latents`` /
``encode_images``, a CLIP RM through :class:`rewardkit.rewards.preprocess.ImageTransform` and
``get_image_features``, the LRM through ``score`` and one update's ``logits``. Parameters,
inputs created before the run and the fixed text embeddings are not what is measured; the
activations (and, for a trained model, its gradients, reported apart) are.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .modules import ModelSpec, build, build_with_lora
from .profiles import Run
from .tracker import LiveBytes, gradients

#: Prompt tokens of the CLIP text encoders (the UNet's cross-attention length).
PROMPT_TOKENS = 77


@dataclass(frozen=True)
class Precision:
    """The dtypes of one call: the module's parameters, and the autocast around it (None: off)."""

    params: torch.dtype = torch.float32
    autocast: torch.dtype | None = None

    def key(self) -> str:
        """A short name for the activation table (``fp32+bf16``: fp32 weights under bf16
        autocast)."""
        names = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
        return names[self.params] + (f"+{names[self.autocast]}" if self.autocast else "")

    def context(self, device_type: str = "cpu") -> contextlib.AbstractContextManager:
        """The autocast of the call (CPU autocast measures what CUDA's keeps: same casts)."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=self.autocast)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Build modules directly in ``dtype`` (fake tensors cannot be cast in place by ``.to``)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def vae_factor(spec: ModelSpec) -> int:
    """Pixels per latent pixel of a VAE: 2 ** (levels - 1) (8 for SD's four levels)."""
    return 2 ** (len(spec.config.get("block_out_channels", [0] * 4)) - 1)


def _sdxl_added(unet_config: dict, batch: int) -> dict[str, torch.Tensor] | None:
    if unet_config.get("addition_embed_type") != "text_time":
        return None
    pooled = (int(unet_config["projection_class_embeddings_input_dim"])
              - 6 * int(unet_config["addition_time_embed_dim"]))
    return {"text_embeds": torch.randn(batch, pooled), "time_ids": torch.randn(batch, 6)}


def unet_run(spec: ModelSpec, precision: Precision, *, trained: bool, checkpointing: bool = False,
             time_cond_proj_dim: int | None = None, lora: tuple | None = None) -> Callable[[], Run]:
    """A UNet call: the student's (``trained``: forward with its graph, then backward) or a
    frozen teacher's / EMA target's (forward under ``no_grad``). ``lora``: ``(rank, alpha,
    target_modules)`` adapters as rewardkit adds them (the base weights frozen)."""
    def setup() -> Run:
        with default_dtype(precision.params):
            unet = (build(spec, time_cond_proj_dim=time_cond_proj_dim) if lora is None else
                    build_with_lora(spec, lora, time_cond_proj_dim=time_cond_proj_dim))
        if checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train(trained)
        if not trained:
            unet.requires_grad_(False)
        elif lora is None:
            unet.requires_grad_(True)
        cross = int(spec.config["cross_attention_dim"])
        channels = int(spec.config.get("in_channels", 4))

        def run(batch: int, side: int, tracker: LiveBytes) -> list:
            for param in unet.parameters():
                param.grad = None
            latents = torch.randn(batch, channels, side, side)
            timesteps = torch.full((batch,), 499, dtype=torch.long)
            prompt = torch.randn(batch, PROMPT_TOKENS, cross)
            w = torch.randn(batch, time_cond_proj_dim) if time_cond_proj_dim else None
            added = _sdxl_added(spec.config, batch)
            grad = torch.enable_grad() if trained else torch.no_grad()
            with grad, precision.context():
                if not trained and precision.params != torch.float32:  # as the teacher is fed
                    latents, prompt = latents.to(precision.params), prompt.to(precision.params)
                out = unet(latents, timesteps, encoder_hidden_states=prompt,
                           added_cond_kwargs=added, timestep_cond=w, return_dict=False)[0]
            tracker.forward_end = tracker.mark()
            if trained:
                out.float().sum().backward()
                return gradients(unet)
            return []
        return run
    return setup


def vae_decode_run(spec: ModelSpec, dtype: torch.dtype, *, graph: bool,
                   checkpointing: bool = False) -> Callable[[], Run]:
    """``decode_latents``: scaled latents to [0, 1] images; with ``graph``, differentiable
    w.r.t. the latents (direct mode), then a backward from the images."""
    def setup() -> Run:
        with default_dtype(dtype):
            vae = build(spec)
        vae.requires_grad_(False).eval()
        if checkpointing:
            vae.enable_gradient_checkpointing()
        scale = float(spec.config.get("scaling_factor", 0.18215))

        def run(batch: int, side: int, tracker: LiveBytes) -> list:
            latents = torch.randn(batch, int(spec.config.get("latent_channels", 4)), side, side,
                                  requires_grad=graph)
            with torch.set_grad_enabled(graph):
                images = vae.decode(latents.to(dtype) / scale).sample
                images = (images / 2 + 0.5).clamp(0, 1).float()
            tracker.forward_end = tracker.mark()
            if graph:
                images.sum().backward()
            return []
        return run
    return setup


def vae_encode_run(spec: ModelSpec, dtype: torch.dtype) -> Callable[[], Run]:
    """``encode_images``: images of ``side`` latent pixels to scaled latents, without
    gradients."""
    def setup() -> Run:
        with default_dtype(dtype):
            vae = build(spec)
        vae.requires_grad_(False).eval()
        factor = vae_factor(spec)

        def run(batch: int, side: int, tracker: LiveBytes) -> list:
            pixels = torch.randn(batch, 3, side * factor, side * factor)
            with torch.no_grad():
                vae.encode(pixels.to(dtype)).latent_dist.sample()
            tracker.forward_end = tracker.mark()
            return []
        return run
    return setup


def reward_run(spec: ModelSpec, dtype: torch.dtype, *, graph: bool,
               factor: int = 8) -> Callable[[], Run]:
    """A reward model scoring ``side * factor``-pixel images in [0, 1]: a CLIP RM (preprocessing,
    image tower, projection, cosine with fixed text embeddings) or ImageReward (its towers);
    with ``graph``, then a backward to the images (direct mode)."""
    from ..rewards.preprocess import ImageTransform

    def setup() -> Run:
        with default_dtype(dtype):
            model = build(spec)
        model.requires_grad_(False).eval()
        if spec.kind == "clip":
            size = int(spec.config.get("vision_config", {}).get("image_size", 224))
            projection = int(spec.config.get("projection_dim", 512))
        else:
            size, projection = 224, 0
        transform = ImageTransform(shortest_edge=size, crop=(size, size))

        def score(images: torch.Tensor) -> torch.Tensor:
            pixels = transform(images).to(dtype)
            if spec.kind == "clip":
                from ..rewards.clip_base import features

                embeds = features(model.get_image_features(pixel_values=pixels))
                embeds = embeds / embeds.norm(dim=-1, keepdim=True)
                text = torch.randn(images.shape[0], projection, dtype=embeds.dtype)
                return (embeds * text).sum(dim=-1)
            ids = torch.zeros(images.shape[0], 35, dtype=torch.long)
            return model(pixels, ids, torch.ones_like(ids))

        def run(batch: int, side: int, tracker: LiveBytes) -> list:
            images = torch.rand(batch, 3, side * factor, side * factor, requires_grad=graph)
            with torch.set_grad_enabled(graph):
                reward = score(images).float()
            tracker.forward_end = tracker.mark()
            if graph:
                reward.mean().backward()
            return []
        return run
    return setup


def proxy_run(spec: ModelSpec, tokens: int, *, update: bool) -> Callable[[], Run]:
    """The LRM (fp32): scoring the student's latents with their graph (``update=False``: the
    proxy frozen, the gradient going to the latents) or one online update (its trainable
    layers, on the batch of candidates)."""
    def setup() -> Run:
        proxy = build(spec)
        text_dim = int(spec.config.get("text_dim", 1024))
        channels = int(spec.config.get("latent_channels", 4))

        def run(batch: int, side: int, tracker: LiveBytes) -> list:
            latents = torch.randn(batch, channels, side, side, requires_grad=not update)
            embeds = torch.randn(batch, tokens, text_dim)
            if update:
                proxy.unfreeze()
                proxy.train()
                for param in proxy.parameters():
                    param.grad = None
                logits = proxy.logits(latents, embeds)
                tracker.forward_end = tracker.mark()
                logits.float().sum().backward()
                grads = gradients(proxy)
                proxy.freeze()
                return grads
            proxy.freeze().eval()
            reward = proxy.score(latents, embeds)
            tracker.forward_end = tracker.mark()
            reward.float().mean().backward()
            return []
        return run
    return setup


def describe(run_name: str, **values: Any) -> str:
    """A table key part from a run's name and settings (sorted ``k=v``)."""
    return run_name + "".join(f";{k}={values[k]}" for k in sorted(values))


__all__ = ["Precision", "proxy_run", "reward_run", "unet_run", "vae_decode_run",
           "vae_encode_run", "vae_factor"]
