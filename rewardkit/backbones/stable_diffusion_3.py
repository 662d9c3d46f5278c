"""The ``stable-diffusion-3`` backbone: an SD 3 / 3.5 flow-matching teacher loaded with diffusers.

The teacher is a ``StableDiffusion3Pipeline`` read with ``from_pretrained`` from a hub id
(``stabilityai/stable-diffusion-3.5-medium``) or a local folder: an MMDiT
``SD3Transformer2DModel`` predicting the velocity ``v = eps - x0`` of the rectified flow
``z_s = (1 - s) x0 + s eps`` (:mod:`rewardkit.flow_matching`, its ``shift`` read from the
``FlowMatchEulerDiscreteScheduler`` config), the 16-channel VAE with ``shift_factor``, two CLIP
text encoders with projections and T5 (``drop_t5=True``, or a folder saved without it, leaves T5
out as diffusers' ``text_encoder_3=None`` does: its tokens are zeros).

Conditioning, as ``StableDiffusion3Pipeline.encode_prompt`` builds it (this backbone calls it), in
one :class:`~rewardkit.backbones.Conditioning`:

- ``prompt_embeds`` ``[B, 77 + max_sequence_length, joint_attention_dim]``: both CLIPs'
  penultimate hidden states concatenated and zero-padded to T5's width, followed by T5's tokens;
- ``added["pooled_projections"]`` ``[B, 768 + 1280]``: both CLIPs' pooled projections;
- the unconditional branch is the empty prompt encoded the same way (SD3's negative prompt).

The student is a copy of the transformer, trained in full or through peft LoRA adapters. It
takes **no guidance embedding**: the guidance is baked in by distillation (the teacher is guided
inside the solver with ``w ~ U[w_min, w_max]``; set ``w_min = w_max`` for one scale), because
``SD3Transformer2DModel`` has no guidance input and ``StableDiffusion3Pipeline`` could not feed
one, so any added embedding would make a student plain diffusers cannot load or sample. Sample it
with ``guidance_scale=1`` (no classifier-free guidance).

:meth:`StableDiffusion3Backbone.save_pipeline` writes a complete ``StableDiffusion3Pipeline``
folder whose scheduler is the teacher's ``FlowMatchEulerDiscreteScheduler``: with the
consistency parametrisation ``f(z, s) = z - s v`` each Euler step ``z + (s' - s) v`` is exactly
"predict ``x0 = f(z, s)``, move to ``s'`` along the predicted noise", the deterministic multistep
consistency sampler rewardkit samples with. ``FlowMatchLCMScheduler`` (fresh noise at each step)
would sample the same student, but ``StableDiffusion3Pipeline`` calls ``scheduler.step`` without
the user's generator, so its re-noising would come from torch's global random state and a seed
would not fix the image.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from ..call_defaults import DIFFUSERS_MAX_SEQUENCE_LENGTH, read_call_defaults
from ..errors import ConfigError
from ..flow_matching import FLOW_PREDICTION, FlowMatchProcess
from ..models import (check_pipeline_location, check_vae_location, pipeline_dtype_kwarg,
                      resolve_dtype)
from .base import Backbone
from .conditioning import Conditioning

#: Folders an SD3 pipeline folder must have (T5's ``text_encoder_3``/``tokenizer_3`` may be absent).
SD3_PARTS: tuple[str, ...] = ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer",
                              "tokenizer_2", "scheduler")
#: LoRA targets of diffusers' SD3 LoRA scripts (``train_dreambooth_lora_sd3.py``).
SD3_LORA_TARGETS: tuple[str, ...] = (
    "attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out", "attn.to_k",
    "attn.to_out.0", "attn.to_q", "attn.to_v",
)
#: The conditioning key of the pooled CLIP projections (the transformer's keyword).
POOLED = "pooled_projections"


def _saved_without_t5(path: str) -> bool:
    """A local folder whose ``model_index.json`` has ``text_encoder_3: [null, null]``."""
    index = Path(os.path.expanduser(path)) / "model_index.json"
    if not index.is_file():
        return False
    entry = json.loads(index.read_text()).get("text_encoder_3")
    return not entry or entry[0] is None


class StableDiffusion3Backbone(Backbone):
    """Stable Diffusion 3 / 3.5 teacher (MMDiT, rectified flow, two CLIPs and T5)."""

    name: ClassVar[str] = "stable-diffusion-3"
    guidance_embedding: ClassVar[bool] = False
    student_scheduler: ClassVar[str] = "FlowMatchEulerDiscreteScheduler"
    #: Sub-folder of a saved pipeline with the EMA target transformer.
    target_dir: ClassVar[str] = "transformer_target"

    def __init__(self, pretrained_model_name_or_path: str, revision: str | None = None,
                 variant: str | None = None, dtype: str = "float32", device: str = "cpu",
                 pretrained_vae_model_name_or_path: str | None = None, drop_t5: bool = False,
                 max_sequence_length: int | None = None) -> None:
        """Load the SD3 teacher with ``StableDiffusion3Pipeline.from_pretrained``.

        Args:
            pretrained_model_name_or_path: hub id or local diffusers SD3 pipeline folder.
            revision: hub revision (branch, tag or commit).
            variant: weight file variant, e.g. ``"fp16"``.
            dtype: dtype of the frozen parts (``float32``, ``float16``, ``bfloat16``).
            device: where the frozen parts live.
            pretrained_vae_model_name_or_path: a VAE to use instead of the teacher's.
            drop_t5: leave the T5 encoder out (``text_encoder_3=None``: its tokens are zeros, as
                diffusers does); a folder saved without T5 is read without it anyway.
            max_sequence_length: T5 tokens per prompt (the pipeline's ``max_sequence_length``).
                Default: the value the folder's ``sampling.json`` records
                (:mod:`rewardkit.call_defaults`), else diffusers' 256. A student saved from
                this backbone records it, so rewardkit samples it with the same value.
        """
        from diffusers import AutoencoderKL, StableDiffusion3Pipeline

        check_pipeline_location(pretrained_model_name_or_path, parts=SD3_PARTS)
        if pretrained_vae_model_name_or_path:
            check_vae_location(pretrained_vae_model_name_or_path)
        if max_sequence_length is None:
            max_sequence_length = read_call_defaults(pretrained_model_name_or_path).get(
                "max_sequence_length", DIFFUSERS_MAX_SEQUENCE_LENGTH)
        if int(max_sequence_length) < 1:
            raise ConfigError(f"max_sequence_length must be positive, got {max_sequence_length}")
        self.path = str(pretrained_model_name_or_path)
        self.revision, self.variant = revision, variant
        self.dtype = resolve_dtype(dtype)
        self.device = torch.device(device)
        self.max_sequence_length = int(max_sequence_length)
        self.drop_t5 = bool(drop_t5) or _saved_without_t5(self.path)
        parts: dict[str, Any] = {}
        if self.drop_t5:
            parts.update(text_encoder_3=None, tokenizer_3=None)
        if pretrained_vae_model_name_or_path:
            parts["vae"] = AutoencoderKL.from_pretrained(pretrained_vae_model_name_or_path,
                                                         torch_dtype=self.dtype)
        try:
            pipe = StableDiffusion3Pipeline.from_pretrained(
                self.path, revision=revision, variant=variant, **parts,
                **pipeline_dtype_kwarg(self.dtype))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{self.path}: not a loadable StableDiffusion3Pipeline "
                              f"({type(exc).__name__}: {str(exc)[:200]})") from None
        pipe.set_progress_bar_config(disable=True)
        self._pipe = pipe  # encode_prompt is diffusers' own
        self.transformer = self.unet = pipe.transformer
        self.vae = pipe.vae
        self.text_encoder, self.text_encoder_2 = pipe.text_encoder, pipe.text_encoder_2
        self.text_encoder_3 = pipe.text_encoder_3
        self.tokenizer, self.tokenizer_2, self.tokenizer_3 = (pipe.tokenizer, pipe.tokenizer_2,
                                                              pipe.tokenizer_3)
        self.noise_scheduler = pipe.scheduler
        for module in self._frozen():
            module.requires_grad_(False)
            module.eval()
            module.to(self.device)
        self._schedule = FlowMatchProcess.from_scheduler_config(dict(self.noise_scheduler.config),
                                                                where=self.path)
        self.prediction_type = FLOW_PREDICTION
        self.vae_scaling_factor = float(self.vae.config.scaling_factor)
        self.vae_shift_factor = float(getattr(self.vae.config, "shift_factor", None) or 0.0)
        config = self.transformer.config
        self.latent_channels = int(config.in_channels)
        self.text_embed_dim = int(config.joint_attention_dim)
        self.pooled_dim = int(config.pooled_projection_dim)
        self.patch_size = int(config.patch_size)
        self.sample_size = int(config.sample_size)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self._empty: Conditioning | None = None

    def _frozen(self) -> list[nn.Module]:
        return [m for m in (self.transformer, self.vae, self.text_encoder, self.text_encoder_2,
                            self.text_encoder_3) if m is not None]

    @property
    def schedule(self) -> FlowMatchProcess:
        """The teacher's rectified flow (:class:`~rewardkit.flow_matching.FlowMatchProcess`)."""
        return self._schedule

    def to(self, device: torch.device | str,
           dtype: torch.dtype | None = None) -> "StableDiffusion3Backbone":
        """Move (and optionally cast) every frozen part, the three text encoders included."""
        for module in self._frozen():
            module.to(device=device, dtype=dtype)
        self.device = torch.device(device)
        if dtype is not None:
            self.dtype = dtype
        self._empty = None
        return self

    def configure(self, resolution: int) -> None:
        """Refuse a training resolution whose latents the transformer cannot cut into patches."""
        side = self.latent_side(resolution)
        if side % self.patch_size or side < self.patch_size:
            step = self.vae_scale_factor * self.patch_size
            raise ConfigError(f"resolution {resolution} does not fit the teacher '{self.path}': "
                              f"it must be a multiple of {step} (the VAE's downscale factor "
                              f"{self.vae_scale_factor} times the patch size {self.patch_size})")

    # ------------------------------------------------------------ codecs

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """SD3's conditioning of ``prompts`` (see the module docstring), no gradients:
        ``StableDiffusion3Pipeline.encode_prompt`` without classifier-free guidance."""
        embeds, _, pooled, _ = self._pipe.encode_prompt(
            prompt=list(prompts), prompt_2=None, prompt_3=None, device=self.device,
            do_classifier_free_guidance=False, max_sequence_length=self.max_sequence_length)
        return Conditioning(embeds, {POOLED: pooled})

    def empty_conditioning(self, batch: int) -> Conditioning:
        """The empty prompt's conditioning (SD3's negative prompt), encoded once, ``batch``
        times."""
        cached = self._empty
        dtype = self.text_encoder.dtype
        if cached is None or cached.prompt_embeds.dtype != dtype:
            cached = self._empty = self.encode_prompts([""])
        return cached.map(lambda t: t.expand(batch, *t.shape[1:]))

    def proxy_text(self, cond: Conditioning) -> torch.Tensor:
        """The prompt tokens plus the pooled projections as one more token (zero-padded to the
        token width; split over several tokens if wider), for the latent proxy RM."""
        embeds = cond.prompt_embeds
        pooled = cond.added[POOLED].to(embeds.dtype)
        width = embeds.shape[-1]
        count = -(-pooled.shape[-1] // width)
        tokens = torch.nn.functional.pad(pooled, (0, count * width - pooled.shape[-1]))
        return torch.cat([embeds, tokens.view(pooled.shape[0], count, width)], dim=1)

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """``(latent_dist.sample() - shift_factor) * scaling_factor`` from images in ``[-1, 1]``."""
        pixels = pixels.to(device=self.vae.device, dtype=self.vae.dtype)
        latents = self.vae.encode(pixels).latent_dist.sample(generator)
        return (latents - self.vae_shift_factor) * self.vae_scaling_factor

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in ``[0, 1]`` from scaled latents (``/ scaling + shift``, decode),
        differentiable."""
        latents = latents.to(device=self.vae.device, dtype=self.vae.dtype)
        images = self.vae.decode(latents / self.vae_scaling_factor + self.vae_shift_factor).sample
        return (images / 2 + 0.5).clamp(0, 1)

    # ------------------------------------------------------------ the student

    def build_student(self, time_cond_proj_dim: int | None = None) -> nn.Module:
        """A trainable fp32 copy of the teacher's transformer (a half-precision teacher is re-read
        in fp32). ``time_cond_proj_dim`` must be ``None``: the guidance is baked in."""
        from diffusers import SD3Transformer2DModel

        if time_cond_proj_dim:
            raise ConfigError(f"unet_time_cond_proj_dim: the '{self.name}' backbone's students "
                              f"take no guidance embedding (got {time_cond_proj_dim}): "
                              "SD3Transformer2DModel has no guidance input, so the guidance is "
                              "baked in by distillation; set unet_time_cond_proj_dim to none")
        student = SD3Transformer2DModel.from_config(dict(self.transformer.config))
        if self.dtype == torch.float32:
            state = self.transformer.state_dict()
        else:
            state = SD3Transformer2DModel.from_pretrained(
                self.path, subfolder="transformer", revision=self.revision, variant=self.variant,
                torch_dtype=torch.float32).state_dict()
        student.load_state_dict(state)
        student.to(self.device)
        student.train()
        student.requires_grad_(True)
        return student

    def add_lora(self, student: nn.Module, rank: int = 64, alpha: int | None = None,
                 target_modules: Sequence[str] | None = None,
                 train_cond_proj: bool = True) -> nn.Module:
        """Add peft LoRA adapters (default targets :data:`SD3_LORA_TARGETS`, ``alpha=None``:
        ``alpha = rank``) and make them the only trainable parameters. ``train_cond_proj`` has
        nothing to act on (no guidance embedding)."""
        from peft import LoraConfig

        if rank <= 0:
            raise ConfigError(f"lora rank must be positive, got {rank}")
        config = LoraConfig(r=rank, lora_alpha=rank if alpha is None else alpha,
                            target_modules=list(target_modules or SD3_LORA_TARGETS),
                            init_lora_weights=True)
        student.requires_grad_(False)
        student.add_adapter(config)
        for name, param in student.named_parameters():
            param.requires_grad_("lora_" in name)
        return student

    def predict(self, unet: nn.Module, latents: torch.Tensor, timesteps: torch.Tensor,
                cond: Conditioning, timestep_cond: torch.Tensor | None = None) -> torch.Tensor:
        """The transformer's velocity ``v`` at model time ``t = 1000 s`` (``timestep_cond`` must
        be ``None``: SD3 students take no guidance embedding)."""
        if timestep_cond is not None:
            raise ConfigError(f"the '{self.name}' backbone's transformer takes no guidance "
                              "embedding; sample it with time_cond_proj_dim=None")
        timesteps = torch.as_tensor(timesteps, device=latents.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(latents.shape[0])
        return unet(hidden_states=latents, timestep=timesteps,
                    encoder_hidden_states=cond.prompt_embeds,
                    pooled_projections=cond.added[POOLED], return_dict=False)[0]

    # ------------------------------------------------------------ schedulers and saving

    def lcm_scheduler(self, original_inference_steps: int = 50,
                      timestep_scaling: float = 10.0) -> Any:
        """The student's few-step scheduler: the teacher's ``FlowMatchEulerDiscreteScheduler``
        (see the module docstring for why). The LCM arguments have no counterpart here: the
        flow consistency function needs no boundary scaling and the schedule is diffusers'."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(self.noise_scheduler.config)

    def teacher_scheduler(self) -> Any:
        """The teacher's own ``FlowMatchEulerDiscreteScheduler`` (Euler with CFG)."""
        return self.lcm_scheduler()

    def pipeline(self, transformer: nn.Module, scheduler: Any) -> Any:
        """A ``StableDiffusion3Pipeline`` of this teacher's parts with ``transformer``."""
        from diffusers import StableDiffusion3Pipeline

        return StableDiffusion3Pipeline(
            transformer=transformer, scheduler=scheduler, vae=self.vae,
            text_encoder=self.text_encoder, tokenizer=self.tokenizer,
            text_encoder_2=self.text_encoder_2, tokenizer_2=self.tokenizer_2,
            text_encoder_3=self.text_encoder_3, tokenizer_3=self.tokenizer_3)

    def save_pipeline(self, student: nn.Module, output_dir: str | Path, lora: bool | None = None,
                      target: nn.Module | None = None, **_: Any) -> Path:
        """Write a complete ``StableDiffusion3Pipeline`` folder sampling the student (see
        :func:`rewardkit.backbones.sd3_saving.save_sd3_pipeline`)."""
        from .sd3_saving import save_sd3_pipeline

        return save_sd3_pipeline(self, student, output_dir, lora=lora, target=target)

    def load_student(self, path: str | Path, *, lora: bool | None = None,
                     train_cond_proj: bool = True) -> nn.Module:
        """A trainable fp32 student from a saved pipeline folder or a training checkpoint (see
        :func:`rewardkit.backbones.sd3_saving.load_sd3_student`)."""
        from .sd3_saving import load_sd3_student

        return load_sd3_student(self, path, lora=lora)


__all__ = ["StableDiffusion3Backbone", "SD3_LORA_TARGETS", "SD3_PARTS"]
