"""The ``stable-diffusion-xl`` backbone: an SDXL teacher, conditioned as diffusers' LCD script does.

SDXL conditions its UNet on more than the prompt embeddings. As diffusers'
``train_lcm_distill_sdxl_wds.py`` builds it:

- ``prompt_embeds`` ``[B, 77, D1 + D2]``: the *penultimate* hidden states of both CLIP text
  encoders, concatenated along the width;
- ``text_embeds`` ``[B, P]``: the second encoder's pooled, projected output;
- ``time_ids`` ``[B, 6]``: original size, crop top-left and target size. rewardkit's loaders
  resize and crop every image to the training resolution, so each sample gets
  ``(R, R, 0, 0, R, R)`` for resolution ``R`` (the script's per-sample original sizes and crop
  offsets would need them in the data);
- the unconditional branch of classifier-free guidance is all zeros for the prompt and the pooled
  embeddings (the script's choice, and SDXL's ``force_zeros_for_empty_prompt``), with the same
  ``time_ids``.

All of it travels in one :class:`~rewardkit.backbones.Conditioning`, so the training step, the
solver's guidance and the proxy update are those of SD 1.x/2.x unchanged. The latent proxy RM
reads :meth:`StableDiffusionXLBackbone.proxy_text`: the prompt embeddings plus the pooled
embedding as one more token. Everything else (the
student, LoRA, saving, the VAE, ``epsilon`` or ``v_prediction``) is the
:class:`~rewardkit.backbones.stable_diffusion.StableDiffusionBackbone`'s; the saved folder is a
complete ``StableDiffusionXLPipeline`` with ``LCMScheduler``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from ..models import PIPELINE_PARTS, transformers_dtype_kwarg
from .conditioning import Conditioning
from .stable_diffusion import StableDiffusionBackbone


class StableDiffusionXLBackbone(StableDiffusionBackbone):
    """Stable Diffusion XL teacher (two text encoders, pooled embeddings, size/crop ids)."""

    name: ClassVar[str] = "stable-diffusion-xl"
    pipeline_parts: ClassVar[tuple[str, ...]] = PIPELINE_PARTS + ("text_encoder_2", "tokenizer_2")
    text_parts: ClassVar[tuple[str, ...]] = ("text_encoder", "text_encoder_2", "tokenizer",
                                             "tokenizer_2")

    def __init__(self, pretrained_model_name_or_path: str, revision: str | None = None,
                 variant: str | None = None, dtype: str = "float32", device: str = "cpu",
                 pretrained_vae_model_name_or_path: str | None = None) -> None:
        """Load the SDXL teacher (see :class:`StableDiffusionBackbone` for the arguments); the
        fp16-fix VAE of diffusers' SDXL scripts is ``pretrained_vae_model_name_or_path=
        "madebyollin/sdxl-vae-fp16-fix"``."""
        from transformers import AutoTokenizer, CLIPTextModelWithProjection

        super().__init__(pretrained_model_name_or_path, revision=revision, variant=variant,
                         dtype=dtype, device=device,
                         pretrained_vae_model_name_or_path=pretrained_vae_model_name_or_path)
        source = dict(pretrained_model_name_or_path=self.path, revision=revision)
        self.tokenizer_2 = AutoTokenizer.from_pretrained(subfolder="tokenizer_2", **source)
        self.text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(
            subfolder="text_encoder_2", variant=variant, **source,
            **transformers_dtype_kwarg(self.dtype))
        self.text_encoder_2.requires_grad_(False).eval().to(self.device)
        self.text_embed_dim = int(self.text_encoder.config.hidden_size
                                  + self.text_encoder_2.config.hidden_size)
        self.pooled_dim = int(self.text_encoder_2.config.projection_dim)
        # SDXL's own VAE overflows in fp16 (NaN images): keep it in fp32 unless another VAE (the
        # fp16-fix) is given, as diffusers' SDXL scripts do; encode/decode cast to its dtype
        self.vae_in_fp32 = (self.dtype == torch.float16 and not pretrained_vae_model_name_or_path)
        if self.vae_in_fp32:
            self.vae.to(dtype=torch.float32)
        #: The image side of the size/crop conditioning; recipes set the training resolution.
        self.resolution = self.sample_size * self.vae_scale_factor

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "StableDiffusionXLBackbone":
        """Move (and optionally cast) the frozen parts, both text encoders included."""
        super().to(device, dtype)
        self.text_encoder_2.to(device=device, dtype=dtype)
        if self.vae_in_fp32:
            self.vae.to(dtype=torch.float32)
        return self

    def configure(self, resolution: int) -> None:
        """Condition on ``resolution`` (the training image side) in ``time_ids``."""
        self.resolution = int(resolution)

    def add_time_ids(self, batch: int, dtype: torch.dtype, resolution: int | None = None) -> torch.Tensor:
        """``(R, R, 0, 0, R, R)`` per sample: original size, crop top-left, target size."""
        side = resolution or self.resolution
        ids = torch.tensor([side, side, 0, 0, side, side], dtype=dtype, device=self.device)
        return ids.expand(batch, -1)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """Both encoders' penultimate hidden states (concatenated), the second's pooled
        projection, and the size/crop ids: SDXL's conditioning (no gradients)."""
        hidden = []
        pooled = None
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder),
                                   (self.tokenizer_2, self.text_encoder_2)):
            ids = tokenizer(list(prompts), padding="max_length", truncation=True,
                            max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
            out = encoder(ids.to(encoder.device), output_hidden_states=True)
            pooled = out[0]  # the last encoder's: CLIPTextModelWithProjection's text_embeds
            hidden.append(out.hidden_states[-2])
        prompt_embeds = torch.cat(hidden, dim=-1)
        return Conditioning(prompt_embeds, {
            "text_embeds": pooled,
            "time_ids": self.add_time_ids(len(prompts), prompt_embeds.dtype)})

    def empty_conditioning(self, batch: int) -> Conditioning:
        """Zeros for the prompt and the pooled embeddings, the same size/crop ids (as diffusers'
        SDXL LCD script builds the unconditional branch)."""
        dtype = self.text_encoder.dtype
        return Conditioning(
            torch.zeros(batch, self.tokenizer.model_max_length, self.text_embed_dim,
                        dtype=dtype, device=self.device),
            {"text_embeds": torch.zeros(batch, self.pooled_dim, dtype=dtype, device=self.device),
             "time_ids": self.add_time_ids(batch, dtype)})

    def proxy_text(self, cond: Conditioning) -> torch.Tensor:
        """The prompt embeddings ``[B, 77, D]`` plus the pooled embedding as a 78th token
        (zero-padded from ``pooled_dim`` to ``D``), so the LRM's text tower reads both."""
        embeds = cond.prompt_embeds
        pooled = cond.added["text_embeds"].to(embeds.dtype)
        token = torch.nn.functional.pad(pooled, (0, embeds.shape[-1] - pooled.shape[-1]))
        return torch.cat([embeds, token[:, None]], dim=1)

    def pipeline(self, unet: nn.Module, scheduler: Any) -> Any:
        """A ``StableDiffusionXLPipeline`` of this teacher's parts with ``unet`` and ``scheduler``."""
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(
            vae=self.vae, text_encoder=self.text_encoder, text_encoder_2=self.text_encoder_2,
            tokenizer=self.tokenizer, tokenizer_2=self.tokenizer_2, unet=unet, scheduler=scheduler)


__all__ = ["StableDiffusionXLBackbone"]
