"""What a teacher's UNet is conditioned on besides the latents and the timestep.

SD 1.x/2.x needs the prompt embeddings alone (``encoder_hidden_states``); SDXL adds a pooled
text embedding and its size/crop ids (``added_cond_kwargs``), and later backbones add their own.
The backbone creates a :class:`Conditioning` (``encode_prompts``, ``empty_conditioning``) and
consumes it (``predict``); the training step, the solver's guidance and the proxy update only
batch it (``cat``, ``index``, ``repeat``, ``to``), without knowing what is inside.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch


@dataclass(frozen=True, eq=False)
class Conditioning:
    """A batch of conditioning: ``prompt_embeds`` ``[B, L, D]`` plus ``added`` tensors, each
    with the same leading batch dimension (SDXL: ``text_embeds`` ``[B, 1280]``, ``time_ids``
    ``[B, 6]``), passed to the UNet as ``added_cond_kwargs``."""

    prompt_embeds: torch.Tensor
    added: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        batch = self.prompt_embeds.shape[0]
        for name, tensor in self.added.items():
            if tensor.shape[0] != batch:
                raise ValueError(f"conditioning '{name}' has batch {tensor.shape[0]}, the prompt "
                                 f"embeddings {batch}")

    def __len__(self) -> int:
        return self.prompt_embeds.shape[0]

    @property
    def added_cond_kwargs(self) -> dict[str, torch.Tensor] | None:
        """``added`` as the UNet's ``added_cond_kwargs`` (``None`` when there is nothing added)."""
        return dict(self.added) if self.added else None

    def map(self, fn: Any) -> "Conditioning":
        """The same conditioning with ``fn`` applied to every tensor."""
        return Conditioning(fn(self.prompt_embeds), {k: fn(v) for k, v in self.added.items()})

    @staticmethod
    def cat(items: Sequence["Conditioning"]) -> "Conditioning":
        """Batch concatenation, ``[a; b; ...]`` (e.g. ``[c; empty]`` for one guided teacher call)."""
        first = items[0]
        return Conditioning(torch.cat([c.prompt_embeds for c in items]),
                            {k: torch.cat([c.added[k] for c in items]) for k in first.added})

    def index(self, rows: Any) -> "Conditioning":
        """The rows ``rows`` (an index tensor, a slice or a list) of every tensor."""
        return self.map(lambda t: t[rows.to(t.device) if isinstance(rows, torch.Tensor) else rows])

    def repeat(self, times: int) -> "Conditioning":
        """``[c; c; ...]``, ``times`` copies along the batch (as ``Tensor.repeat``)."""
        return self.map(lambda t: t.repeat(times, *([1] * (t.ndim - 1))))

    def to(self, device: torch.device | str | None = None,
           dtype: torch.dtype | None = None) -> "Conditioning":
        """Every tensor on ``device`` and, if given, in ``dtype`` (floating tensors only)."""
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype if dtype is not None and t.is_floating_point()
                        else None)
        return self.map(move)

    def float(self) -> "Conditioning":
        """Every floating tensor in float32."""
        return self.to(dtype=torch.float32)

    def detach(self) -> "Conditioning":
        """Every tensor detached from the graph."""
        return self.map(lambda t: t.detach())


__all__ = ["Conditioning"]
