"""The ``imagereward`` reward model: ImageReward-v1.0, differentiable with respect to the images."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from rewardkit.errors import ConfigError
from rewardkit.rewards import PromptCache, RewardModel

from .loading import load_imagereward
from .preprocess import imagereward_preprocess

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
OUTPUTS = ("hinge", "raw")


@dataclass
class ImageRewardConfig:
    """Parameters of the ``imagereward`` reward model."""

    checkpoint: str = field(default="ImageReward-v1.0", metadata={
        "help": "'ImageReward-v1.0' (THUDM/ImageReward on the hub), a weights file, or a folder "
                "with ImageReward.pt (+ med_config.json, vision_config.json, tokenizer files)"})
    output: str = field(default="hinge", metadata={
        "help": "'hinge': min(r - hinge_at, 0) as RG-LCD trains with; 'raw': the ImageReward score r"})
    hinge_at: float = field(default=2.0, metadata={"help": "where the hinge stops rewarding"})
    med_config: str | None = field(default=None, metadata={
        "help": "local BERT/MED config JSON (default: the checkpoint folder's, else packaged copy)"})
    tokenizer: str | None = field(default=None, metadata={
        "help": "local BERT tokenizer folder or hub id (default: checkpoint folder, else "
                "bert-base-uncased)"})
    vision_config: str | None = field(default=None, metadata={
        "help": "local ViT config JSON (default: ViT-L/16 at 224, ImageReward's)"})
    max_length: int = field(default=35, metadata={"help": "prompt tokens (ImageReward uses 35)"})
    cache_dir: str | None = field(default=None, metadata={"help": "hub cache folder"})
    device: str = field(default="cpu", metadata={"help": "device of the weights"})
    dtype: str = field(default="float32", metadata={"help": "float32, float16 or bfloat16"})
    antialias: bool = field(default=True, metadata={
        "help": "antialias the bicubic resize (as PIL, which ImageReward was trained with, does)"})
    weights_only: bool = field(default=True, metadata={
        "help": "load .pt checkpoints with torch.load(weights_only=True); False only for trusted files"})


class ImageRewardReward(RewardModel):
    """ImageReward-v1.0 (BLIP) human-preference reward; RG-LCD's hinge min(r - 2, 0) by default.

    Images pass through ImageReward's preprocessing in torch (shorter side to 224 bicubic, centre
    crop, CLIP normalisation) and the BLIP ViT; the prompt (35 tokens) cross-attends to the image
    tokens in the BERT encoder; the [CLS] state goes through the MLP head and ImageReward's
    standardisation: ``r`` is the library's ``score_gard``. The text encoder depends on the image,
    so only the tokens are computed once per distinct prompt (:attr:`text_cache`, on the device).
    ``output="hinge"`` returns ``min(r - hinge_at, 0)``, the reward of the reference RG-LCD code,
    which stops rewarding once ``r >= 2``; ``output="raw"`` returns ``r``. ``logit_scale`` is
    ``None`` (the reference code multiplies ImageReward by the LRM's own logit scale in the
    distillation loss).
    """

    name = "imagereward"
    input_space = "pixels"
    differentiable = True
    logit_scale = None
    Config = ImageRewardConfig

    def __init__(self, config: ImageRewardConfig | None = None) -> None:
        self.config = config = config or ImageRewardConfig()
        if config.output not in OUTPUTS:
            raise ConfigError(f"reward model 'imagereward': output '{config.output}' is not one "
                              f"of {', '.join(OUTPUTS)}")
        if config.dtype not in _DTYPES:
            raise ConfigError(f"reward model 'imagereward': dtype '{config.dtype}' is not one of "
                              f"{', '.join(_DTYPES)}")
        if config.max_length < 2:
            raise ConfigError("reward model 'imagereward': max_length must be at least 2")
        loaded = load_imagereward(config.checkpoint, med_config=config.med_config,
                                  tokenizer=config.tokenizer, vision_config=config.vision_config,
                                  cache_dir=config.cache_dir, weights_only=config.weights_only)
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.checkpoint_path = loaded.checkpoint_path
        self.image_size = self.model.vision_config.image_size
        #: Token ids and masks on the device, computed once per distinct prompt (see PromptCache).
        self.text_cache = PromptCache(self._tokenize)
        self.to(config.device, _DTYPES[config.dtype])

    def to(self, device: torch.device | str | None = None,
           dtype: torch.dtype | None = None) -> "ImageRewardReward":
        """Move the weights once (and drop cached tokens); :meth:`score` moves the (small) inputs
        to them."""
        self.model.to(device=device, dtype=dtype)
        self.text_cache.clear()
        return self

    @property
    def device(self) -> torch.device:
        return self.model.blip.visual_encoder.cls_token.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.blip.visual_encoder.cls_token.dtype

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask ``[B, max_length]`` (padded to max_length, truncated),
        computed once per distinct prompt."""
        return self.text_cache(prompts)

    def _tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tokenizer(prompts, padding="max_length", truncation=True,
                                max_length=self.config.max_length, return_tensors="pt")
        return tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device)

    def raw_score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """ImageReward's score ``r`` per image-prompt pair, ``[B]``; differentiable in the images."""
        pixels = imagereward_preprocess(images.to(self.device, self.dtype), self.image_size,
                                        antialias=self.config.antialias)
        input_ids, attention_mask = self.tokenize(prompts)
        return self.model(pixels, input_ids, attention_mask).float()

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """The configured reward: the hinge ``min(r - hinge_at, 0)`` or the raw ``r``."""
        r = self.raw_score(images, prompts)
        if self.config.output == "hinge":
            return torch.clamp(r - self.config.hinge_at, max=0.0)
        return r
