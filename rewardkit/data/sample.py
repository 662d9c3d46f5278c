"""What a data source hands the loader: one :class:`Sample`, or a :class:`CorruptSample` error.

Any object with ``__len__`` and ``load(i) -> Sample`` is a :class:`SampleSource` (in-memory lists,
procedural generators such as the embedded world, a user's database). A source signals a bad
sample by raising :class:`CorruptSample` with a short reason ("truncated image", "missing
caption", ...); the loader skips it, counts it under that reason and carries on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass
class Sample:
    """One training example: an image (or pre-encoded latents) and its caption.

    ``image`` is a PIL image, a ``uint8`` HWC numpy array, or a CHW tensor (``uint8``, or float in
    ``[0, 1]``); ``latents`` is a ``[C, h, w]`` tensor already multiplied by the VAE scaling
    factor. Exactly one of the two is set. ``key`` identifies the sample in reports.
    """

    caption: str
    image: Any = None
    latents: torch.Tensor | None = None
    key: str | None = None


@runtime_checkable
class SampleSource(Protocol):
    """A random-access dataset: ``len(source)`` samples, ``source.load(i)`` returns one.

    ``load`` may raise :class:`CorruptSample` (or any exception) for an unreadable sample; the
    loader skips it. A source of latents may expose ``vae_scaling_factor`` so the loader can check
    it against the teacher's.
    """

    def __len__(self) -> int: ...

    def load(self, index: int) -> Sample: ...


class CorruptSample(Exception):
    """A single sample cannot be used; ``reason`` is the category counted in the skip report."""

    def __init__(self, reason: str, detail: str = "", key: str | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.key = key
        super().__init__(f"{reason}: {detail}" if detail else reason)
