"""Tiny offline fixtures for training tests and benchmarks: a teacher, a dataset, a config.

>>> teacher = build_tiny_sd_pipeline(tmp / "teacher")          # rewardkit.testing.tiny_sd
>>> data = write_tiny_image_folder(tmp / "data", count=8, size=16)
>>> config = tiny_lcd_config(teacher, data, tmp / "out", max_train_steps=4)
>>> LCDRecipe(config).run(progress=False)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..recipes.lcd_config import LCDConfig


COLOURS = ("red", "green", "blue")
SHAPES = ("circle", "square")


def write_tiny_image_folder(path: str | Path, count: int = 8, size: int = 16, seed: int = 0) -> Path:
    """A folder of ``count`` PNGs (coloured squares/circles on noise) with ``captions.jsonl``."""
    from PIL import Image

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rgb = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
    lines = []
    yy, xx = np.mgrid[:size, :size]
    for i in range(count):
        colour, shape = COLOURS[i % len(COLOURS)], SHAPES[(i // len(COLOURS)) % len(SHAPES)]
        pixels = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
        centre, radius = size / 2, size / 4
        mask = ((yy - centre) ** 2 + (xx - centre) ** 2 <= radius ** 2) if shape == "circle" else (
            (abs(yy - centre) <= radius) & (abs(xx - centre) <= radius))
        pixels[mask] = rgb[colour]
        name = f"{i:04d}.png"
        Image.fromarray(pixels).save(path / name)
        lines.append(json.dumps({"file_name": name, "text": f"a photo of a {colour} {shape}"}))
    (path / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return path


def tiny_lcd_config(teacher: str | Path, data: str | Path, output_dir: str | Path,
                    **overrides: Any) -> LCDConfig:
    """An :class:`LCDConfig` sized for the tiny teacher (16 px images, 8x8 latents, batch 2)."""
    values: dict[str, Any] = dict(
        pretrained_teacher_model=str(teacher), train_shards_path_or_url=str(data),
        output_dir=str(output_dir), resolution=16, train_batch_size=2, max_train_steps=4,
        learning_rate=1e-4, unet_time_cond_proj_dim=32, checkpointing_steps=0,
        validation_steps=0, seed=0, report_to="none",
        validation_prompts=["a photo of a red circle", "a blue square"],
        validation_seeds=[0], validation_inference_steps=[1, 2, 4])
    values.update(overrides)
    from ..recipes.lcd_config import LCDConfig  # the lcd recipe's config (recipes build on training)

    config = LCDConfig(**values)
    config.validate()
    return config
