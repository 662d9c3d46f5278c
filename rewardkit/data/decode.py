"""Decoding raw bytes into images and captions, with a skip reason for everything that fails."""

from __future__ import annotations

import io
import json
import warnings

from PIL import Image, UnidentifiedImageError

from .sample import CorruptSample

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "ppm", "tif", "tiff")
CAPTION_EXTENSIONS = ("txt", "caption", "text")
JSON_CAPTION_FIELDS = ("caption", "text", "prompt")


def decode_image(data: bytes, where: str) -> Image.Image:
    """A fully decoded PIL image; :class:`CorruptSample` when the bytes are not a whole image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()  # decode now: a truncated file fails here, not later in a transform
    except UnidentifiedImageError as exc:
        raise CorruptSample("undecodable image", str(exc), where) from None
    except Image.DecompressionBombError as exc:
        raise CorruptSample("image too large", str(exc), where) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise CorruptSample("truncated or corrupt image", str(exc), where) from None
    if image.width == 0 or image.height == 0:
        raise CorruptSample("empty image", f"{image.width}x{image.height}", where)
    return image


def decode_caption(data: bytes, where: str) -> str:
    """UTF-8 text, stripped; :class:`CorruptSample` when the bytes are not UTF-8."""
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise CorruptSample("undecodable caption", str(exc), where) from None


def caption_from_json(data: bytes, where: str) -> str | None:
    """The caption field of a webdataset ``.json`` member, or None when it has none."""
    try:
        record = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptSample("undecodable caption", f"bad json: {exc}", where) from None
    if isinstance(record, dict):
        for name in JSON_CAPTION_FIELDS:
            if isinstance(record.get(name), str):
                return record[name].strip()
    return None


def sample_fields(members: dict[str, bytes], where: str) -> tuple[Image.Image, str]:
    """Image and caption from a webdataset sample's ``{extension: bytes}``."""
    image_ext = next((ext for ext in IMAGE_EXTENSIONS if ext in members), None)
    if image_ext is None:
        raise CorruptSample("missing image", f"members: {', '.join(sorted(members))}", where)
    caption = None
    caption_ext = next((ext for ext in CAPTION_EXTENSIONS if ext in members), None)
    if caption_ext is not None:
        caption = decode_caption(members[caption_ext], where)
    elif "json" in members:
        caption = caption_from_json(members["json"], where)
    if caption is None:
        raise CorruptSample("missing caption", f"members: {', '.join(sorted(members))}", where)
    return decode_image(members[image_ext], where), caption
