"""Rehearsal: pairs from a fixed expert-scored preference set mixed into every online proxy update.

The online update only ever sees the current student's candidates (and the ground truth), a
narrow distribution that the student itself moves towards whatever the proxy over-rates. Trained
on nothing else, a pretrained proxy forgets the broader preferences it learned (on the world, the
held-out accuracy of a pretrained LRM fell from 0.82 to 0.72-0.74 in the first 200 online steps;
see docs/rg-lcd.md). Rehearsal is the continual-learning remedy: each update adds a
Bradley-Terry loss on ``batch_size`` random same-prompt pairs of a fixed
:class:`~rewardkit.proxies.preference_set.PreferenceSet` (typically the training-data set that
``lrm-pretrain`` saved in ``output_dir/preference_set``), weighted by ``weight``. It costs no
expert call: the set was scored once, when it was built.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .base import ProxyRewardModel
from .preference_set import PreferenceSet
from .pretrain_losses import pairwise_logistic_loss


class Rehearsal:
    """Samples rehearsal pairs and computes their loss for a proxy."""

    def __init__(self, pset: PreferenceSet, batch_size: int = 64, weight: float = 1.0) -> None:
        if batch_size < 1 or weight <= 0:
            raise ConfigError(f"proxy rehearsal needs batch_size >= 1 and weight > 0; got "
                              f"{batch_size} and {weight}")
        self.first, self.second, _ = pset.pairs()
        if self.first.numel() == 0:
            raise ConfigError("the proxy rehearsal set has no pairs with different expert scores")
        self.pset, self.batch_size, self.weight = pset, batch_size, weight

    def loss(self, proxy: ProxyRewardModel, generator: torch.Generator | None = None) -> torch.Tensor:
        """``weight`` x the Bradley-Terry loss of ``proxy`` on a fresh random batch of pairs."""
        device = next(proxy.parameters()).device
        rows = torch.randint(0, self.first.numel(), (self.batch_size,), generator=generator)
        a, b = self.first[rows], self.second[rows]
        both = torch.cat([a, b])
        latents = self.pset.latents[both].to(device)
        embeds = self.pset.prompt_embeds[self.pset.prompt_index[both]].to(device)
        scores = proxy(latents, embeds).float()
        expert = self.pset.expert.to(device)
        loss = pairwise_logistic_loss(scores[:a.numel()], scores[a.numel():], expert[a], expert[b],
                                      proxy.logit_scale_value())
        return self.weight * loss
