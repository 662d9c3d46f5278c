"""Example rewardkit backbone plugin: ``sd-taesd``, Stable Diffusion whose ``decode_latents`` (the
path every reward gradient of RG-LCD goes through) uses a tiny autoencoder (TAESD,
``diffusers.AutoencoderTiny``) instead of the full VAE decoder."""

from .backbone import TinyDecoderBackbone

__version__ = "0.1.0"
__all__ = ["TinyDecoderBackbone"]
