"""ImageReward-v1.0 (Xu et al. 2023) as one torch module: BLIP towers + MLP head.

``ImageRewardModel.forward(pixels, input_ids, attention_mask)`` is ImageReward's ``score_gard``:
the [CLS] state of the text encoder cross-attending to the image, through the MLP, standardised
with ImageReward's mean and std. Parameter names follow the published ``ImageReward.pt``
(``blip.visual_encoder.*``, ``blip.text_encoder.*``, ``mlp.layers.*``).
"""

from __future__ import annotations

import torch
from torch import nn

from .blip_vit import VisionTransformer
from .configs import TextConfig, VisionConfig
from .med_bert import MedTextEncoder

#: ImageReward's standardisation of the MLP output (``ImageReward.py``).
REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072


class BLIPTowers(nn.Module):
    """The two BLIP parts ImageReward scores with (``vision_proj``/``text_proj`` are unused)."""

    def __init__(self, vision: VisionConfig, text: TextConfig) -> None:
        super().__init__()
        self.visual_encoder = VisionTransformer(vision)
        self.text_encoder = MedTextEncoder(text)


class RewardHead(nn.Module):
    """ImageReward's MLP: 768 -> 1024 -> 128 -> 64 -> 16 -> 1, no activations, dropout in between."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(width, 1024), nn.Dropout(0.2),
            nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )
        for name, param in self.layers.named_parameters():
            if "weight" in name:
                nn.init.normal_(param, mean=0.0, std=1.0 / (width + 1))
            else:
                nn.init.zeros_(param)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ImageRewardModel(nn.Module):
    """BLIP ViT + cross-attending BERT + MLP -> the ImageReward score per (image, prompt)."""

    def __init__(self, vision: VisionConfig | None = None, text: TextConfig | None = None) -> None:
        super().__init__()
        vision = vision or VisionConfig()
        text = text or TextConfig()
        if text.encoder_width != vision.width:  # BLIP sets it from the vision tower
            text = TextConfig(**{**text.__dict__, "encoder_width": vision.width})
        self.vision_config, self.text_config = vision, text
        self.blip = BLIPTowers(vision, text)
        self.mlp = RewardHead(text.hidden_size)

    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        """Normalised ``image_size`` pixels, token ids and mask -> rewards ``[B]``."""
        image_embeds = self.blip.visual_encoder(pixels)
        hidden = self.blip.text_encoder(input_ids, attention_mask, image_embeds)
        rewards = self.mlp(hidden[:, 0, :]).squeeze(-1)
        return (rewards - REWARD_MEAN) / REWARD_STD
