"""Per-prompt results of a reward model's text side, computed once per distinct prompt."""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Sequence, Union

import torch

Encoded = Union[torch.Tensor, tuple[torch.Tensor, ...]]


class PromptCache:
    """Computes ``encode(prompts)`` once per distinct prompt and keeps the rows for later calls.

    ``encode`` takes a list of distinct prompts and returns a tensor, or a tuple of tensors, whose
    first dimension is one row per prompt (embeddings; token ids and their mask). Calling the cache
    with a prompt list, repeats allowed, returns the rows stacked in the list's order: an RM that
    scores a step's images several times against the same captions encodes them once. ``encode``
    runs under ``no_grad`` and rows are kept detached, so no autograd graph outlives a call. At most
    ``size`` prompts are kept, the least recently used dropped first; a call with more distinct
    prompts than that is still answered in full. :meth:`clear` after moving the encoder to another
    device or dtype.
    """

    def __init__(self, encode: Callable[[list[str]], Encoded], size: int = 4096) -> None:
        if size < 1:
            raise ValueError(f"PromptCache size must be at least 1, got {size}")
        self.encode = encode
        self.size = size
        self._rows: OrderedDict[str, tuple[torch.Tensor, ...]] = OrderedDict()
        self._as_tuple = False  # whether encode returns a tuple (rows are kept as tuples)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, prompt: object) -> bool:
        return prompt in self._rows

    def clear(self) -> None:
        self._rows.clear()

    def __call__(self, prompts: Sequence[str]) -> Encoded:
        prompts = list(prompts)
        if not prompts:
            raise ValueError("PromptCache needs at least one prompt")
        distinct = list(dict.fromkeys(prompts))
        missing = [p for p in distinct if p not in self._rows]
        rows = {p: self._rows[p] for p in distinct if p in self._rows}
        if missing:
            with torch.no_grad():
                encoded = self.encode(missing)
            self._as_tuple = not isinstance(encoded, torch.Tensor)
            parts = tuple(encoded) if self._as_tuple else (encoded,)
            for i, prompt in enumerate(missing):
                # a clone, not a view: a kept row must not keep its whole batch alive
                rows[prompt] = tuple(part[i].detach().clone() for part in parts)
        for prompt in distinct:
            self._rows[prompt] = rows[prompt]
            self._rows.move_to_end(prompt)
        while len(self._rows) > self.size:
            self._rows.popitem(last=False)
        # stacked from this call's rows, so eviction above never loses one of them
        stacked = tuple(torch.stack([rows[p][k] for p in prompts])
                        for k in range(len(rows[distinct[0]])))
        return stacked if self._as_tuple else stacked[0]
