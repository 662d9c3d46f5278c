"""CLIP-style image preprocessing in torch, so gradients flow from a score back to the pixels.

:class:`ImageTransform` does what a ``CLIPImageProcessor`` does to an image that is already a float
tensor in [0, 1] (no uint8 rescale): resize the shorter side (bicubic, antialiased, as PIL does when
downsampling), center-crop, normalise. Its settings are read from the processor's own config
(``preprocessor_config.json`` of a hub repository or local folder), so the mean, std and sizes are
the checkpoint's, not hard-coded.

Note: the RG-LCD reference code resizes with torchvision on tensors (no antialias) and does no crop;
for square inputs the crop changes nothing, and antialiasing is what the processor (PIL) does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# PIL resample codes used in image-processor configs -> torch interpolation modes.
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


@dataclass(frozen=True)
class ImageTransform:
    """Resize (shorter side or exact size), center crop and normalise a [0, 1] NCHW batch.

    Attributes:
        shortest_edge: resize so the shorter side has this length (keeps the aspect ratio);
            ``None`` when ``size`` is exact.
        size: exact ``(height, width)`` to resize to, used when ``shortest_edge`` is ``None``.
        crop: ``(height, width)`` of the center crop, or ``None`` for no crop.
        mean, std: per-channel normalisation.
        mode: torch interpolation mode ("bicubic", "bilinear", "nearest").
    """

    shortest_edge: int | None = 224
    size: tuple[int, int] | None = None
    crop: tuple[int, int] | None = (224, 224)
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    mode: str = "bicubic"

    @classmethod
    def from_processor_config(cls, config: Mapping[str, Any],
                              default_size: int = 224) -> "ImageTransform":
        """Build from an image-processor config dict (new ``{"shortest_edge": n}`` or old int sizes)."""
        shortest: int | None = None
        exact: tuple[int, int] | None = None
        if config.get("do_resize", True):
            size = config.get("size", default_size)
            if isinstance(size, Mapping) and "shortest_edge" in size:
                shortest = int(size["shortest_edge"])
            elif isinstance(size, Mapping) and "height" in size:
                exact = (int(size["height"]), int(size["width"]))
            elif isinstance(size, (int, float)):
                shortest = int(size)
            else:
                shortest = default_size
        crop = None
        if config.get("do_center_crop", True):
            crop_size = config.get("crop_size", shortest or default_size)
            if isinstance(crop_size, Mapping):
                crop = (int(crop_size["height"]), int(crop_size["width"]))
            else:
                crop = (int(crop_size), int(crop_size))
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        if config.get("do_normalize", True):
            mean = tuple(float(v) for v in config.get("image_mean", OPENAI_CLIP_MEAN))
            std = tuple(float(v) for v in config.get("image_std", OPENAI_CLIP_STD))
        mode = _RESAMPLE.get(int(config.get("resample", 3)), "bicubic")
        return cls(shortest_edge=shortest, size=exact, crop=crop, mean=mean,  # type: ignore[arg-type]
                   std=std, mode=mode)

    @classmethod
    def from_pretrained(cls, name_or_path: str, default_size: int = 224,
                        **hub_kwargs: Any) -> "ImageTransform":
        """Read the image-processor config of a hub id or local folder.

        Falls back to OpenAI CLIP settings at ``default_size`` (the model's image size) when the
        repository has no image-processor config.
        """
        from transformers.image_processing_base import ImageProcessingMixin

        try:
            config, _ = ImageProcessingMixin.get_image_processor_dict(name_or_path, **hub_kwargs)
        except (OSError, ValueError):
            config = {}
        if "image_processor" in config and isinstance(config["image_processor"], Mapping):
            config = config["image_processor"]  # a processor_config.json with a nested section
        if not config:
            config = {"size": {"shortest_edge": default_size},
                      "crop_size": {"height": default_size, "width": default_size}}
        return cls.from_processor_config(config, default_size)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The ``(height, width)`` after resizing, as the Hugging Face processor computes it."""
        if self.shortest_edge is not None:
            short, long = (height, width) if height <= width else (width, height)
            new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
            return (new_short, new_long) if height <= width else (new_long, new_short)
        if self.size is not None:
            return self.size
        return height, width

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocess float images in [0, 1], shape (B, 3, H, W); differentiable."""
        height, width = images.shape[-2:]
        target = self.output_size(height, width)
        if target != (height, width):
            antialias = self.mode in ("bilinear", "bicubic") and (
                target[0] < height or target[1] < width)
            extra = {} if self.mode == "nearest" else {"align_corners": False}
            images = F.interpolate(images, size=target, mode=self.mode, antialias=antialias, **extra)
        if self.crop is not None:
            images = center_crop(images, self.crop)
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
        return (images - mean) / std


def center_crop(images: torch.Tensor, crop: tuple[int, int]) -> torch.Tensor:
    """Center crop to ``crop = (height, width)``, zero-padding sides that are too small (like HF)."""
    height, width = images.shape[-2:]
    crop_h, crop_w = crop
    if crop_h > height or crop_w > width:
        pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
        images = F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        height, width = images.shape[-2:]
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return images[..., top:top + crop_h, left:left + crop_w]
