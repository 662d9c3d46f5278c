"""``clip-score``: cosine similarity between CLIP image and text embeddings.

Any ``transformers`` CLIP checkpoint works, by hub id or local path: the default
``openai/clip-vit-large-patch14``, or ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (the RG-LCD
reference's CLIPScore model). The score is the raw cosine (about 0.2-0.35 for matching pairs),
as in the RG-LCD reference code. It is **not** Hessel et al.'s CLIPScore ``2.5 * max(cos, 0)``:
there is no rescaling and no clipping at 0, so the gradient never vanishes on poor images.
``logit_scale`` is the model's ``exp(logit_scale)`` (about 100), which turns score differences
into preference logits for the latent proxy RM.

Preprocessing runs in torch (resize of the shorter side, bicubic with antialiasing, center crop,
normalisation with the mean/std of the checkpoint's image-processor config), so gradients flow
to the pixels; prompts are embedded under ``no_grad`` and cached.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .clip_base import CLIPRewardModel


class CLIPScore(CLIPRewardModel):
    """CLIP image-text cosine similarity (transformers CLIPModel; differentiable)."""

    name = "clip-score"
    input_space = "pixels"
    differentiable = True

    def __init__(self, model: str = "openai/clip-vit-large-patch14", processor: str | None = None,
                 dtype: str = "float32", device: str = "cpu", revision: str | None = None) -> None:
        """Load CLIP ``model`` (hub id or folder); ``processor`` defaults to ``model``."""
        super().__init__(model, processor, dtype=dtype, device=device, revision=revision)

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Cosine similarity of each image with its prompt, shape ``[B]``."""
        return self.cosine(images, prompts)
