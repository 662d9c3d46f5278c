"""``aesthetic``: the LAION aesthetic predictor (a head on L2-normalised CLIP ViT-L/14 image features).

The prompt is ignored. The CLIP image tower (``CLIPVisionModelWithProjection``, default
``openai/clip-vit-large-patch14``) loads by hub id or local path; the head (see
:mod:`rewardkit.rewards.aesthetic_head`) from a local ``.pth``/``.safetensors`` file or a hub file
``owner/repo/filename``. The default head is the improved-aesthetic-predictor MLP
(``sac+logos+ava1-l14-linearMSE``) as mirrored at ``trl-lib/ddpo-aesthetic-predictor``; the
RG-LCD reference uses LAION's linear head ``sa_0_4_vit_l_14_linear.pth`` (pass its path).
Scores are on the predictor's 1-10 scale (about 4-7 for typical images); ``logit_scale`` is
``None`` (1): a one-point difference is one logit.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import ConfigError
from .aesthetic_head import load_head
from .module_reward import ModuleRewardModel
from .clip_base import resolve_dtype
from .preprocess import ImageTransform


class AestheticScore(ModuleRewardModel):
    """LAION aesthetic predictor on CLIP ViT-L/14 image embeddings (prompt ignored; differentiable)."""

    name = "aesthetic"
    input_space = "pixels"
    differentiable = True
    logit_scale = None

    def __init__(self, clip_model: str = "openai/clip-vit-large-patch14",
                 head: str = "trl-lib/ddpo-aesthetic-predictor/aesthetic-model.pth",
                 head_type: str = "auto", processor: str | None = None, dtype: str = "float32",
                 device: str = "cpu", revision: str | None = None) -> None:
        """Load the CLIP image tower ``clip_model`` and the aesthetic ``head`` (file or hub file)."""
        from transformers import CLIPVisionModelWithProjection
        from transformers.utils import logging as hf_logging

        hub = {"revision": revision} if revision else {}
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # a full CLIP checkpoint's text weights are "unexpected"
        try:
            vision, info = CLIPVisionModelWithProjection.from_pretrained(
                clip_model, output_loading_info=True, **hub)
        except OSError as exc:
            raise ConfigError(f"reward model 'aesthetic' could not load CLIP from "
                              f"'{clip_model}': {exc}") from exc
        finally:
            hf_logging.set_verbosity(verbosity)
        if info.get("missing_keys"):
            raise ConfigError(f"reward model 'aesthetic': '{clip_model}' lacks CLIP image-tower "
                              f"weights {sorted(info['missing_keys'])[:4]}")
        self.vision = vision.eval().requires_grad_(False)
        self.head = load_head(head, head_type).eval().requires_grad_(False)
        if self.head.in_features != vision.config.projection_dim:
            raise ConfigError(f"reward model 'aesthetic': head '{head}' takes "
                              f"{self.head.in_features}-d features but '{clip_model}' gives "
                              f"{vision.config.projection_dim}-d ones")
        processor_hub = hub if processor is None else {}
        self.transform = ImageTransform.from_pretrained(
            processor or clip_model, default_size=int(vision.config.image_size), **processor_hub)
        self.to(device, resolve_dtype(dtype, self.name))

    def weight_modules(self) -> list[torch.nn.Module]:
        return [self.head, self.vision]

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Predicted aesthetic rating of each image, shape ``[B]`` (prompts are not used)."""
        # resized in fp32 (bicubic antialiasing has no bf16 CPU kernel), then cast
        pixels = self.transform(images.to(self.device, torch.float32)).to(self.dtype)
        embeds = self.vision(pixel_values=pixels).image_embeds
        embeds = embeds / embeds.norm(dim=-1, keepdim=True)
        return self.head(embeds).to(images.device)
