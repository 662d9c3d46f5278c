"""``sd-taesd``: a Stable Diffusion teacher whose reward path decodes with TAESD.

RG-LCD decodes the student's one-step latent and scores the image with the reward model every
step; the full SD VAE decoder is a large share of that cost at 512-768 px. TAESD
(``madebyollin/taesd``, loaded as ``diffusers.AutoencoderTiny``) decodes the same latents at a
fraction of the cost and is differentiable, so the reward gradient still reaches the student.
Everything else (encoding training images, the saved pipeline) keeps the teacher's own VAE.

Written from rewardkit's CONTRIBUTING alone: subclass the built-in backbone, override one method,
register it through ``register_backbones``, and hold it to ``rewardkit.testing.check_backbone``.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from rewardkit.backbones.stable_diffusion import StableDiffusionBackbone
from rewardkit.errors import ConfigError


class TinyDecoderBackbone(StableDiffusionBackbone):
    """Stable Diffusion 1.x/2.x whose ``decode_latents`` uses a tiny autoencoder (TAESD)."""

    name: ClassVar[str] = "sd-taesd"

    def __init__(self, pretrained_model_name_or_path: str, tiny_vae: str = "madebyollin/taesd",
                 revision: str | None = None, variant: str | None = None, dtype: str = "float32",
                 device: str = "cpu") -> None:
        """Load the teacher as the ``stable-diffusion`` backbone does, plus ``tiny_vae``: an
        ``AutoencoderTiny`` hub id (``madebyollin/taesd`` for SD 1.x/2.x) or local folder."""
        from diffusers import AutoencoderTiny

        super().__init__(pretrained_model_name_or_path, revision=revision, variant=variant,
                         dtype=dtype, device=device)
        try:
            self.tiny_vae = AutoencoderTiny.from_pretrained(tiny_vae, torch_dtype=self.dtype)
        except (OSError, ValueError) as error:
            raise ConfigError(f"backbone 'sd-taesd': tiny_vae '{tiny_vae}' cannot be loaded as "
                              f"an AutoencoderTiny ({error}); pass a hub id like "
                              "madebyollin/taesd or a local AutoencoderTiny folder") from None
        if self.tiny_vae.config.latent_channels != self.latent_channels:
            raise ConfigError(f"backbone 'sd-taesd': tiny_vae has "
                              f"{self.tiny_vae.config.latent_channels} latent channels, the "
                              f"teacher {self.latent_channels}")
        self.tiny_vae.requires_grad_(False).eval().to(self.device)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "TinyDecoderBackbone":
        """Move the frozen parts, the tiny decoder included."""
        super().to(device, dtype)
        self.tiny_vae.to(device=device, dtype=dtype)
        return self

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in ``[0, 1]`` from scaled latents through TAESD (which decodes the *scaled*
        latents directly: its ``scaling_factor`` is 1), differentiable w.r.t. ``latents``."""
        latents = latents.to(device=self.device, dtype=self.tiny_vae.dtype)
        images = self.tiny_vae.decode(latents).sample
        return (images / 2 + 0.5).clamp(0, 1)
