"""``pickscore``: PickScore (Kirstain et al. 2023), a CLIP ViT-H-14 fine-tuned on Pick-a-Pic.

Weights ``yuvalkirstain/PickScore_v1``; tokenizer and image-processor settings from
``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``, as in the PickScore release (both configurable, by hub
id or local path). The score is the cosine of the normalised image and text embeddings, as in the
RG-LCD reference; the official PickScore is that cosine times ``exp(logit_scale)`` (about 100),
which is this RM's ``logit_scale``. Preprocessing is done in torch, so it is differentiable.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .clip_base import CLIPRewardModel


class PickScore(CLIPRewardModel):
    """PickScore v1: human-preference-tuned CLIP ViT-H-14 (cosine; differentiable)."""

    name = "pickscore"
    input_space = "pixels"
    differentiable = True

    def __init__(self, model: str = "yuvalkirstain/PickScore_v1",
                 processor: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
                 dtype: str = "float32", device: str = "cpu", revision: str | None = None) -> None:
        """Load the PickScore ``model`` and the tokenizer/image settings of ``processor``."""
        super().__init__(model, processor, dtype=dtype, device=device, revision=revision)

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Cosine similarity of each image with its prompt, shape ``[B]``."""
        return self.cosine(images, prompts)
