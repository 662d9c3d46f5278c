"""A reward-model base for RMs whose weights are ``torch.nn.Module`` s.

:class:`ModuleRewardModel` moves all of them with one :meth:`to` call (never per score) and
reports their device and dtype. Subclasses list their modules in :meth:`weight_modules`.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import RewardModel


class ModuleRewardModel(RewardModel):
    """A :class:`RewardModel` whose frozen weights live in ``nn.Module`` s (see :meth:`weight_modules`)."""

    def weight_modules(self) -> list[nn.Module]:
        """The modules holding this RM's weights; the first one's parameters set device and dtype."""
        raise NotImplementedError

    def to(self, device: torch.device | str | None = None,
           dtype: torch.dtype | None = None) -> "ModuleRewardModel":
        """Move every weight module once; :meth:`score` moves the (small) inputs to them."""
        for module in self.weight_modules():
            module.to(device=device, dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.weight_modules()[0].parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.weight_modules()[0].parameters()).dtype
