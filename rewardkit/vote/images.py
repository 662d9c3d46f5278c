"""The images a vote names, read back for scoring (``vote report --metrics``) and for the
preference-set export: each vote's ``image_a`` / ``image_b``, relative to the votes file's folder
unless absolute."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError


def vote_image(votes_path: str | Path, vote: dict[str, Any], arm: str) -> Path:
    """The file of arm ``"a"`` or ``"b"`` of ``vote``."""
    path = Path(vote[f"image_{arm}"])
    return path if path.is_absolute() else Path(votes_path).resolve().parent / path


def load_images(paths: Sequence[Path], what: str = "study image") -> Any:
    """``[N, 3, H, W]`` in [0, 1] from ``paths`` (one size), each unreadable file named."""
    from PIL import Image

    from ..sampling import pil_to_tensor

    images = []
    for path in paths:
        try:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{what} {path} cannot be read ({type(exc).__name__}); keep the "
                              "study's images folder beside the votes file, or start the study "
                              "again to sample it again") from None
    sizes = {image.size for image in images}
    if len(sizes) > 1:
        raise ConfigError(f"{what}s of one model have several sizes ({sorted(sizes)}), e.g. "
                          f"{paths[0]}; were two studies' images mixed?")
    return pil_to_tensor(images)


__all__ = ["load_images", "vote_image"]
