"""The wire format of ``rewardkit serve-reward`` (protocol 1), shared by the server and the
``remote`` reward model. docs/remote_rewards.md describes it for other clients.

``POST /score`` takes one body::

    b"RKS1" + uint32 little-endian n + n bytes of UTF-8 JSON header + payload

with the header ``{"prompts": [B strings], "metadata": null | {...} | [B objects],
"images": {...}}`` and ``images`` one of:

- ``{"encoding": "uint8" | "float32", "shape": [B, C, H, W]}``: the payload is the NCHW
  tensor's bytes, C order, little-endian (``uint8`` is read as ``value / 255``);
- ``{"encoding": "png", "sizes": [B byte counts]}``: the payload is B PNG files one after the
  other, all of one size (RGB, or anything PIL converts to RGB).

It answers JSON: ``{"scores": [B floats], "terms": {term: [B floats or null]}}`` (200), or
``{"error": "one sentence"}`` with 400 (a malformed request), 401 (a missing or wrong token),
413 (too large), 422 (the RM refused the images), 500 (the RM failed) or 503 (the queue is full;
try again). ``GET /health`` answers ``{"status": "ok"}`` without a token; ``GET /describe``
the served RM's name, version, differentiability, input space, logit scale, expected image
size and the server's limits.

Nothing here unpickles: the header is JSON, the payload raw numbers or PNG.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

#: The protocol's version (``/describe`` says it; a client refuses another).
PROTOCOL_VERSION = 1
#: The first bytes of a ``/score`` body.
MAGIC = b"RKS1"
#: Image encodings a ``/score`` request may use.
ENCODINGS = ("float32", "uint8", "png")
#: The media type of a ``/score`` body.
CONTENT_TYPE = "application/x-rewardkit-score"
#: Largest JSON header accepted (prompts and metadata).
MAX_HEADER_BYTES = 16 * 2**20

_DTYPES = {"float32": np.dtype("<f4"), "uint8": np.dtype("u1")}


class ProtocolError(ValueError):
    """A request or an answer that does not follow the protocol; the message says what."""


@dataclass
class ScoreRequest:
    """A decoded ``/score`` request: float images ``[B, C, H, W]`` (pixels in [0, 1] unless the
    RM reads latents), one prompt per image and the optional metadata."""

    images: torch.Tensor
    prompts: list[str]
    metadata: Any = None


# ---------------------------------------------------------------- encoding (the client)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[0, 1] float NCHW images as uint8 (rounded), the 8-bit value ``round(255 x)``."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def encode_png(image: np.ndarray) -> bytes:
    """One uint8 CHW RGB image as PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).save(
        buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def encode_request(images: torch.Tensor, prompts: Sequence[str], encoding: str = "float32",
                   metadata: Any = None) -> bytes:
    """The ``/score`` body of ``images`` (NCHW float) and ``prompts`` in ``encoding``."""
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    header: dict[str, Any] = {"prompts": list(prompts), "metadata": metadata}
    if encoding == "float32":
        array = images.detach().to(dtype=torch.float32, device="cpu").contiguous().numpy()
        payload = array.astype("<f4", copy=False).tobytes()
        header["images"] = {"encoding": "float32", "shape": list(array.shape)}
    elif encoding == "uint8":
        array = to_uint8(images)
        payload = array.tobytes()
        header["images"] = {"encoding": "uint8", "shape": list(array.shape)}
    else:
        files = [encode_png(image) for image in to_uint8(images)]
        payload = b"".join(files)
        header["images"] = {"encoding": "png", "sizes": [len(f) for f in files]}
    head = json.dumps(header, allow_nan=False).encode()
    return MAGIC + struct.pack("<I", len(head)) + head + payload


# ---------------------------------------------------------------- decoding (the server)


def read_header(body: bytes) -> tuple[dict[str, Any], memoryview]:
    """The JSON header and the payload of a ``/score`` body."""
    if len(body) < 8 or body[:4] != MAGIC:
        raise ProtocolError(f"the body does not start with {MAGIC.decode()} (a rewardkit "
                            "score request; see docs/remote_rewards.md)")
    (length,) = struct.unpack("<I", body[4:8])
    if length > MAX_HEADER_BYTES or 8 + length > len(body):
        raise ProtocolError(f"the header length {length} does not fit the body of "
                            f"{len(body)} bytes")
    try:
        header = json.loads(bytes(body[8:8 + length]).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ProtocolError(f"the header is not JSON ({error})") from None
    if not isinstance(header, dict):
        raise ProtocolError("the header must be a JSON object")
    return header, memoryview(body)[8 + length:]


def decode_request(body: bytes, max_images: int | None = None) -> ScoreRequest:
    """Decode a ``/score`` body; :class:`ProtocolError` says what is wrong with it."""
    header, payload = read_header(body)
    prompts = header.get("prompts")
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise ProtocolError("'prompts' must be a list of strings, one per image")
    if max_images is not None and len(prompts) > max_images:
        raise TooManyImages(len(prompts), max_images)
    spec = header.get("images")
    if not isinstance(spec, dict) or spec.get("encoding") not in ENCODINGS:
        raise ProtocolError(f"'images' must say its encoding, one of {', '.join(ENCODINGS)}")
    encoding = spec["encoding"]
    if encoding == "png":
        images = _decode_pngs(spec, payload)
    else:
        images = _decode_raw(spec, payload, encoding)
    if images.shape[0] != len(prompts):
        raise ProtocolError(f"{images.shape[0]} images but {len(prompts)} prompts; send one "
                            "prompt per image")
    metadata = header.get("metadata")
    if isinstance(metadata, list) and len(metadata) != len(prompts):
        raise ProtocolError(f"'metadata' is a list of {len(metadata)} but there are "
                            f"{len(prompts)} images; send one object per image, or one for all")
    return ScoreRequest(images, prompts, metadata)


class TooManyImages(ProtocolError):
    """A request with more images than the server takes at once (answered with 413)."""

    def __init__(self, count: int, limit: int) -> None:
        super().__init__(f"the request holds {count} images, over the server's limit of "
                         f"{limit} (--max-request-images); send fewer per request "
                         "(the remote RM's max_batch)")


def _decode_raw(spec: dict[str, Any], payload: memoryview, encoding: str) -> torch.Tensor:
    shape = spec.get("shape")
    if (not isinstance(shape, list) or len(shape) != 4
            or not all(isinstance(s, int) and s >= 0 for s in shape)):
        raise ProtocolError("'images.shape' must be [B, C, H, W] (four non-negative integers)")
    dtype = _DTYPES[encoding]
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(payload) != expected:
        raise ProtocolError(f"{encoding} images of shape {shape} take {expected} bytes, the "
                            f"payload has {len(payload)}")
    array = np.frombuffer(payload, dtype=dtype).reshape(shape)
    if encoding == "uint8":
        return torch.from_numpy(array.astype(np.float32) / np.float32(255))
    return torch.from_numpy(array.astype(np.float32))  # a copy: owns its memory, native order


def _decode_pngs(spec: dict[str, Any], payload: memoryview) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    sizes = spec.get("sizes")
    if not isinstance(sizes, list) or not all(isinstance(s, int) and s > 0 for s in sizes):
        raise ProtocolError("'images.sizes' must list the byte count of each PNG")
    if sum(sizes) != len(payload):
        raise ProtocolError(f"the PNG sizes add up to {sum(sizes)} bytes, the payload has "
                            f"{len(payload)}")
    arrays, start = [], 0
    for index, size in enumerate(sizes):
        try:
            with Image.open(io.BytesIO(payload[start:start + size])) as image:
                if image.format != "PNG":
                    raise ProtocolError(f"image {index} is {image.format}, not PNG")
                arrays.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
        except (OSError, UnidentifiedImageError, ValueError) as error:
            if isinstance(error, ProtocolError):
                raise
            raise ProtocolError(f"image {index} is not a readable PNG ({error})") from None
        start += size
    if len({a.shape for a in arrays}) > 1:
        raise ProtocolError("the PNGs of one request must share one size, got "
                            + ", ".join(sorted({f"{a.shape[1]}x{a.shape[0]}" for a in arrays})))
    if not arrays:
        return torch.zeros(0, 3, 0, 0)
    stacked = np.stack(arrays).transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255)
    return torch.from_numpy(np.ascontiguousarray(stacked))


# ---------------------------------------------------------------- answers


def encode_scores(scores: torch.Tensor, terms: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The JSON answer of scores ``[B]`` and terms ``{term: [B]}`` (non-finite terms as null;
    the scores were checked finite)."""
    def values(tensor: torch.Tensor) -> list[float | None]:
        return [v if np.isfinite(v) else None
                for v in tensor.detach().double().cpu().tolist()]

    return {"scores": values(scores), "terms": {name: values(t) for name, t in terms.items()}}


def decode_scores(answer: Any, count: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Scores ``[count]`` (float64) and terms of a ``/score`` answer (parsed JSON);
    :class:`ProtocolError` says what is wrong (not a mapping, a wrong count, NaN, ...)."""
    if not isinstance(answer, dict) or "scores" not in answer:
        raise ProtocolError("the answer has no 'scores'")
    scores = _numbers(answer["scores"], count, "scores")
    bad = int((~np.isfinite(scores)).sum())
    if bad:
        raise ProtocolError(f"{bad} of the {count} scores are not finite (NaN or inf)")
    terms_in = answer.get("terms") or {}
    if not isinstance(terms_in, dict):
        raise ProtocolError("'terms' is not a mapping")
    terms = {str(name): _numbers(values, count, f"term '{name}'")
             for name, values in terms_in.items()}
    return scores, terms


def _numbers(values: Any, count: int, what: str) -> np.ndarray:
    if not isinstance(values, list) or len(values) != count:
        found = f"{len(values)} values" if isinstance(values, list) else type(values).__name__
        raise ProtocolError(f"{what}: expected {count} values, got {found}")
    if not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
               for v in values):
        raise ProtocolError(f"{what}: not all values are numbers")
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


__all__ = ["CONTENT_TYPE", "ENCODINGS", "MAGIC", "PROTOCOL_VERSION", "ProtocolError",
           "ScoreRequest", "TooManyImages", "decode_request", "decode_scores", "encode_png",
           "encode_request", "encode_scores", "to_uint8"]
