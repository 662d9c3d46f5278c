"""The ``hpsv2`` reward model: HPSv2 / HPSv2.1 score, differentiable with respect to the images."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from rewardkit.errors import ConfigError
from rewardkit.rewards import PromptCache, RewardModel

from .loading import HPS_VERSIONS, load_hps_model, resolve_checkpoint
from .preprocess import hps_preprocess

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class HPSv2Config:
    """Parameters of the ``hpsv2`` reward model."""

    version: str = field(default="v2.1", metadata={
        "help": "published HPS weights to download: v2.0 or v2.1 (ignored with checkpoint)"})
    checkpoint: str | None = field(default=None, metadata={
        "help": "local HPS checkpoint file (.pt/.pth/.bin/.safetensors) or a folder with one"})
    model_config: str | None = field(default=None, metadata={
        "help": "OpenCLIP model config: JSON file or architecture name (default ViT-H-14)"})
    cache_dir: str | None = field(default=None, metadata={
        "help": "hub cache folder for the downloaded weights (default: huggingface_hub's)"})
    device: str = field(default="cpu", metadata={"help": "device of the weights"})
    dtype: str = field(default="float32", metadata={"help": "float32, float16 or bfloat16"})
    antialias: bool = field(default=False, metadata={
        "help": "antialias the bicubic resize; false (default) is HPSv2's own tensor resize as "
                "its published scores were computed (torchvision < 0.17), true what the "
                "unchanged hpsv2 package does under a current torchvision"})
    weights_only: bool = field(default=True, metadata={
        "help": "load .pt checkpoints with torch.load(weights_only=True); False only for trusted files"})


class HPSv2Reward(RewardModel):
    """HPSv2/HPSv2.1 human preference score: cosine of the HPS image and prompt embeddings.

    The image passes through HPSv2's evaluation preprocessing in torch (longest side to the model's
    input size, bicubic; zero-pad to square; OpenAI normalisation), so the score is differentiable
    with respect to the images. The prompt side runs without gradients, once per distinct prompt
    (:attr:`text_cache`). The score is the plain
    cosine similarity (about 0.2-0.35 for real images, as the reference RG-LCD code uses it; the
    HPSv2 benchmark reports it x100). ``logit_scale`` is ``exp(model.logit_scale)``.
    """

    name = "hpsv2"
    input_space = "pixels"
    differentiable = True
    Config = HPSv2Config

    def __init__(self, config: HPSv2Config | None = None) -> None:
        self.config = config = config or HPSv2Config()
        if config.dtype not in _DTYPES:
            raise ConfigError(f"reward model 'hpsv2': dtype '{config.dtype}' is not one of "
                              f"{', '.join(_DTYPES)}")
        if config.checkpoint is None and config.version not in HPS_VERSIONS:
            raise ConfigError(f"reward model 'hpsv2': unknown version '{config.version}'; "
                              f"choose one of {', '.join(HPS_VERSIONS)} or pass checkpoint=PATH")
        self.checkpoint_path = resolve_checkpoint(config.version, config.checkpoint, config.cache_dir)
        self.model, self.tokenizer, self.model_config = load_hps_model(
            self.checkpoint_path, config.model_config, weights_only=config.weights_only)
        image_size = self.model.visual.image_size
        self.image_size = int(image_size[0] if isinstance(image_size, (tuple, list)) else image_size)
        self.logit_scale = float(self.model.logit_scale.detach().float().exp())
        #: Prompt embeddings, computed once per distinct prompt (bounded, see PromptCache).
        self.text_cache = PromptCache(self._encode_texts)
        self.to(config.device, _DTYPES[config.dtype])

    def to(self, device: torch.device | str | None = None,
           dtype: torch.dtype | None = None) -> "HPSv2Reward":
        """Move the weights once (and drop cached prompt embeddings); :meth:`score` moves the
        (small) inputs to them."""
        self.model.to(device=device, dtype=dtype)
        self.text_cache.clear()
        return self

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.logit_scale.dtype

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Unit-norm prompt embeddings ``[B, D]`` (no gradients), computed once per distinct
        prompt."""
        return self.text_cache(prompts)

    def _encode_texts(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(prompts).to(self.device)
        return self.model.encode_text(tokens, normalize=True)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings ``[B, D]`` of images in [0, 1]; differentiable."""
        pixels = hps_preprocess(images.to(self.device, self.dtype), self.image_size,
                                antialias=self.config.antialias)
        return self.model.encode_image(pixels, normalize=True)

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """HPS cosine per image-prompt pair, shape ``[B]``, float32."""
        image_features = self.encode_images(images)
        text_features = self.encode_prompts(prompts)
        return (image_features * text_features).sum(dim=-1).float()
