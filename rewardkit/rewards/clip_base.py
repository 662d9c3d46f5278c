"""Shared machinery of the CLIP-based reward models (clip-score, pickscore, aesthetic).

:class:`CLIPRewardModel` loads a ``transformers`` ``CLIPModel`` plus its tokenizer and
image-processor settings by hub id or local path, freezes it, and moves it to its device and dtype
once. Images go through :class:`~rewardkit.rewards.preprocess.ImageTransform` in torch (gradients
flow to the pixels); prompts are embedded under ``no_grad`` and cached per prompt.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..errors import ConfigError
from ..models import resolve_dtype as resolve_any_dtype
from .module_reward import ModuleRewardModel
from .preprocess import ImageTransform
from .prompt_cache import PromptCache

def resolve_dtype(dtype: str | torch.dtype, owner: str) -> torch.dtype:
    """``"float16"``/``"fp16"``/``torch.float16`` -> ``torch.float16``; ConfigError naming ``owner``."""
    return resolve_any_dtype(dtype, key=f"reward model '{owner}': dtype")


def features(output: Any) -> torch.Tensor:
    """The projected embeddings from ``get_image_features``/``get_text_features``.

    transformers 4 returns a tensor, transformers 5 a model output whose ``pooler_output`` holds
    the projection.
    """
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class CLIPRewardModel(ModuleRewardModel):
    """Base of the CLIP-based reward models: loading, torch preprocessing, text-embedding cache.

    Subclasses implement :meth:`score` with :meth:`image_embeddings` and :meth:`text_embeddings`.
    """

    def __init__(self, model: str, processor: str | None = None, dtype: str = "float32",
                 device: str = "cpu", revision: str | None = None) -> None:
        from transformers import AutoTokenizer, CLIPModel

        self.model_path = str(model)
        self.processor_path = str(processor or model)
        torch_dtype = resolve_dtype(dtype, self.name)
        hub = {"revision": revision} if revision else {}
        processor_hub = hub if processor is None else {}  # the revision pins `model` only
        try:
            clip = CLIPModel.from_pretrained(self.model_path, **hub)
            self.tokenizer = AutoTokenizer.from_pretrained(self.processor_path, **processor_hub)
        except OSError as exc:
            raise ConfigError(f"reward model '{self.name}' could not load CLIP from "
                              f"'{self.model_path}' (tokenizer from '{self.processor_path}'): "
                              f"{exc}") from exc
        self.model = clip.eval().requires_grad_(False)
        self.transform = ImageTransform.from_pretrained(
            self.processor_path, default_size=int(clip.config.vision_config.image_size),
            **processor_hub)
        self.max_length = min(int(getattr(self.tokenizer, "model_max_length", 77) or 77),
                              int(clip.config.text_config.max_position_embeddings))
        self.logit_scale = float(clip.logit_scale.detach().float().exp())
        #: The prompts' embeddings, computed once per distinct prompt (bounded, see PromptCache).
        self.text_cache = PromptCache(self._encode_texts)
        self.to(device, torch_dtype)

    # ------------------------------------------------------------ placement

    def weight_modules(self) -> list[torch.nn.Module]:
        return [self.model]

    def to(self, device: torch.device | str | None = None,
           dtype: torch.dtype | None = None) -> "CLIPRewardModel":
        """Move the weights once (and drop cached text embeddings made elsewhere)."""
        super().to(device, dtype)
        self.text_cache.clear()
        return self

    # ------------------------------------------------------------ embeddings

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings of [0, 1] images; differentiable w.r.t. ``images``."""
        # resized in fp32 (bicubic antialiasing has no bf16 CPU kernel), then cast
        pixels = self.transform(images.to(self.device, torch.float32)).to(self.dtype)
        embeds = features(self.model.get_image_features(pixel_values=pixels))
        return embeds / embeds.norm(dim=-1, keepdim=True)

    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings (no gradient), computed once per distinct prompt."""
        return self.text_cache(prompts)

    def _encode_texts(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(prompts, padding=True, truncation=True,
                                max_length=self.max_length, return_tensors="pt")
        tokens = {k: v.to(self.device) for k, v in tokens.items()
                  if k in ("input_ids", "attention_mask")}
        embeds = features(self.model.get_text_features(**tokens))
        return embeds / embeds.norm(dim=-1, keepdim=True)

    def cosine(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Cosine similarity of each image with its prompt, shape ``[B]``, on ``images.device``."""
        image = self.image_embeddings(images)
        text = self.text_embeddings(prompts).to(image.dtype)
        return (image * text).sum(dim=-1).to(images.device)
