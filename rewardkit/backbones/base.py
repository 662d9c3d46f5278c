"""The backbone contract: a latent diffusion teacher and everything around it.

A backbone loads the teacher's parts (UNet, VAE, text encoder, tokenizer, noise scheduler) by hub
id or local path, encodes prompts and images, decodes latents, builds the student (teacher
weights plus a guidance-scale embedding) and saves a complete diffusers pipeline folder.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from ..noise_process import NoiseProcess
from ..schedule import NoiseSchedule
from .conditioning import Conditioning


class Backbone(ABC):
    """A frozen teacher plus the codecs around it.

    Attributes set by implementations: ``unet`` (the frozen teacher), ``vae``, ``text_encoder``,
    ``tokenizer``, ``noise_scheduler``, ``prediction_type`` (``"epsilon"``, ``"v_prediction"`` or
    ``"sample"``), ``vae_scaling_factor``, ``latent_channels``, ``text_embed_dim``,
    ``sample_size`` (the teacher's native latent side: a run at another ``resolution`` samples
    at :meth:`latent_side` of it instead), ``vae_scale_factor`` (image pixels per latent pixel;
    8 when unset), ``device`` and ``dtype`` (of the frozen parts).
    Everything below is what the recipes, validation and the proxies call; check an
    implementation with :func:`rewardkit.testing.check_backbone`.
    """

    name: ClassVar[str] = "backbone"
    #: Whether the student takes the guidance scale as an input (a ``time_cond_proj_dim``
    #: embedding, LCM's w-conditioning). ``False``: guidance is baked into the student by
    #: distillation and ``build_student`` takes ``time_cond_proj_dim=None`` only.
    guidance_embedding: ClassVar[bool] = True
    #: The diffusers scheduler class a saved student samples with (:meth:`lcm_scheduler`).
    student_scheduler: ClassVar[str] = "LCMScheduler"

    unet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: Any
    noise_scheduler: Any
    prediction_type: str
    vae_scaling_factor: float
    latent_channels: int
    text_embed_dim: int
    sample_size: int
    device: torch.device
    dtype: torch.dtype

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """The teacher's cumulative alpha schedule ``abar`` ``[T]``."""
        return self.noise_scheduler.alphas_cumprod

    @property
    def schedule(self) -> NoiseProcess:
        """The teacher's noise process (:class:`~rewardkit.noise_process.NoiseProcess`), built
        once: the training step, the solver and the guided denoiser all use this one object.
        By default the DDPM :class:`~rewardkit.schedule.NoiseSchedule` of the scheduler's
        ``alphas_cumprod`` and :attr:`prediction_type` (cached on each device it is used on); a
        flow-matching backbone returns a :class:`~rewardkit.flow_matching.FlowMatchProcess`."""
        cached = self.__dict__.get("_schedule")
        if cached is None or cached.prediction_type != self.prediction_type:
            cached = self.__dict__["_schedule"] = NoiseSchedule(self.alphas_cumprod,
                                                                self.prediction_type)
        return cached

    @abstractmethod
    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """The prompts' :class:`Conditioning` (``prompt_embeds`` ``[B, L, D]`` plus whatever
        else the UNet takes), without gradients."""

    @abstractmethod
    def empty_conditioning(self, batch: int) -> Conditioning:
        """The empty prompt's conditioning, ``batch`` times (the unconditional branch of
        classifier-free guidance; implementations encode it once and cache it)."""

    def configure(self, resolution: int) -> None:
        """Called by the recipes with the training image side before training (SDXL conditions
        on it); nothing to do by default."""

    def latent_side(self, resolution: int) -> int:
        """The side of the latents :meth:`encode_images` makes of ``resolution``-pixel images:
        ``resolution // vae_scale_factor`` (8 when the backbone sets no ``vae_scale_factor``)."""
        return int(resolution) // int(getattr(self, "vae_scale_factor", 8))

    def proxy_text(self, cond: Conditioning) -> torch.Tensor:
        """What a latent proxy RM reads of ``cond``: token embeddings ``[B, L', text_embed_dim]``
        (by default the prompt embeddings; SDXL adds its pooled embedding as one more token).
        Preference sets and replay buffers store this tensor."""
        return cond.prompt_embeds

    @abstractmethod
    def encode_images(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled latents from images in ``[-1, 1]`` (``latent_dist.sample() * scaling_factor``)."""

    @abstractmethod
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in ``[0, 1]`` from scaled latents; differentiable with respect to ``latents``."""

    @abstractmethod
    def build_student(self, time_cond_proj_dim: int = 256) -> nn.Module:
        """A UNet with the teacher's weights and a ``time_cond_proj_dim`` guidance embedding."""

    def load_student(self, path: str | Path, *, lora: bool | None = None,
                     train_cond_proj: bool = True) -> nn.Module:
        """A trainable fp32 student read back from ``path``: a distilled pipeline folder (what
        :meth:`save_pipeline` writes) or a training checkpoint folder (``checkpoint-N/``).

        The student comes back as :meth:`build_student` (and, for a LoRA student,
        :meth:`add_lora`) would have built it during training, so a new algorithm can continue
        from a saved student. ``lora=None`` keeps a LoRA student as base weights plus trainable
        adapters, ``False`` gives the merged UNet with every weight trainable, ``True`` insists
        on the LoRA. A folder that is neither kind raises :class:`~rewardkit.errors.ConfigError`.
        Backbones that cannot do this (the default) say so.
        """
        from ..errors import ConfigError

        raise ConfigError(f"the '{self.name}' backbone cannot load a saved student (it does not "
                          f"implement load_student); cannot read '{path}'")

    @abstractmethod
    def predict(self, unet: nn.Module, latents: torch.Tensor, timesteps: torch.Tensor,
                cond: Conditioning, timestep_cond: torch.Tensor | None = None) -> torch.Tensor:
        """The raw UNet output (noise, v or sample, per ``prediction_type``) for ``cond`` (a
        :class:`Conditioning` of the same batch) and the student's guidance embedding."""

    @abstractmethod
    def add_lora(self, student: nn.Module, rank: int = 64, alpha: int | None = None,
                 target_modules: Sequence[str] | None = None,
                 train_cond_proj: bool = True) -> nn.Module:
        """Add LoRA adapters to ``student`` and make them (and, with ``train_cond_proj``, the
        new guidance embedding) its only trainable parameters; return it."""

    @abstractmethod
    def lcm_scheduler(self, original_inference_steps: int = 50,
                      timestep_scaling: float = 10.0) -> Any:
        """The diffusers scheduler that samples the student in a few steps (what validation
        samples with and what :meth:`save_pipeline` writes): an ``LCMScheduler`` on the
        teacher's schedule for DDPM teachers, of the class :attr:`student_scheduler` names."""

    def teacher_scheduler(self) -> Any:
        """A diffusers scheduler that samples the teacher with classifier-free guidance (the
        LRM's preference sets compare its samples): ``DDIMScheduler`` on the teacher's
        schedule by default."""
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(self.noise_scheduler.config)

    @abstractmethod
    def save_pipeline(self, student: nn.Module, output_dir: str | Path, **kwargs: Any) -> Path:
        """Save a diffusers pipeline folder that samples with ``LCMScheduler`` from the student.

        Keyword arguments the recipes pass when the method takes them: ``original_inference_steps``,
        ``timestep_scaling`` and ``target`` (the EMA target UNet, saved as ``unet_target/``)."""

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "Backbone":
        """Move the frozen parts once."""
        for module in (self.unet, self.vae, self.text_encoder):
            module.to(device=device, dtype=dtype)
        return self


def save_student_pipeline(backbone: Backbone, student: nn.Module, path: str | Path,
                          **kwargs: Any) -> Path:
    """``backbone.save_pipeline(student, path, **kwargs)`` with only the keyword arguments the
    backbone's method takes (a third-party backbone may take none of them)."""
    import inspect

    takes = inspect.signature(backbone.save_pipeline).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in takes.values()):
        kwargs = {key: value for key, value in kwargs.items() if key in takes}
    return backbone.save_pipeline(student, path, **kwargs)

