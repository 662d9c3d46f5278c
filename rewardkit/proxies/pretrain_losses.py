"""Losses of LRM pretraining (``lrm-pretrain``): multi-positive InfoNCE and a pairwise logistic.

- :func:`multi_positive_info_nce`: CLIP's symmetric contrastive loss over a batch of (latent,
  caption) pairs, with *multi-positive* targets: every sample whose caption equals sample
  ``i``'s is a positive of ``i`` (the target row is uniform over them), never a negative. With
  all captions distinct it is exactly the CLIP loss. Datasets with few distinct captions (the
  embedded world) put duplicates in most batches; treating them as negatives would push apart
  embeddings the model should make equal.
- :func:`pairwise_logistic_loss`: the Bradley-Terry loss on expert-ordered pairs,
  ``BCE_with_logits(logit_scale * (s_a - s_b), 1[expert_a > expert_b])``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError


def caption_groups(captions: Sequence[str]) -> torch.Tensor:
    """``[B]`` group ids: equal captions get equal ids (in order of first appearance)."""
    ids: dict[str, int] = {}
    return torch.tensor([ids.setdefault(c, len(ids)) for c in captions], dtype=torch.long)


def multi_positive_targets(groups: torch.Tensor) -> torch.Tensor:
    """``[B, B]`` targets: row ``i`` is uniform over the members of ``i``'s group (sums to 1)."""
    same = (groups[:, None] == groups[None, :]).float()
    return same / same.sum(dim=1, keepdim=True)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``-sum_j targets[i, j] * log_softmax(logits[i])_j``."""
    return -(targets * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def multi_positive_info_nce(image_embeds: torch.Tensor, text_embeds: torch.Tensor,
                            logit_scale: torch.Tensor | float,
                            captions: Sequence[str] | None = None,
                            groups: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE of unit-norm ``[B, E]`` embeddings, duplicates counted as positives.

    ``logits = logit_scale * image_embeds @ text_embeds.T``; the loss is the mean of the
    image-to-text and text-to-image soft cross-entropies against
    :func:`multi_positive_targets`. Give ``captions`` (compared as strings) or ``groups`` (ids);
    with neither, every sample is its own group (the plain CLIP loss).
    """
    if image_embeds.ndim != 2 or image_embeds.shape != text_embeds.shape:
        raise ConfigError(f"InfoNCE takes two [B, E] embedding tensors of the same shape; got "
                          f"{tuple(image_embeds.shape)} and {tuple(text_embeds.shape)}")
    batch = image_embeds.shape[0]
    if groups is None:
        groups = caption_groups(captions) if captions is not None else torch.arange(batch)
    if groups.shape != (batch,):
        raise ConfigError(f"InfoNCE got {batch} embeddings but {tuple(groups.shape)} caption "
                          "groups; pass one caption per sample")
    targets = multi_positive_targets(groups.to(image_embeds.device))
    logits = logit_scale * image_embeds.float() @ text_embeds.float().T
    return 0.5 * (soft_cross_entropy(logits, targets) + soft_cross_entropy(logits.T, targets.T))


def retrieval_accuracy(image_embeds: torch.Tensor, text_embeds: torch.Tensor,
                       groups: torch.Tensor) -> torch.Tensor:
    """Fraction of images whose most similar text in the batch has the image's caption."""
    best = (image_embeds.float() @ text_embeds.float().T).argmax(dim=1)
    groups = groups.to(best.device)
    return (groups[best] == groups).float().mean()


def pairwise_logistic_loss(scores_a: torch.Tensor, scores_b: torch.Tensor,
                           expert_a: torch.Tensor, expert_b: torch.Tensor,
                           logit_scale: torch.Tensor | float) -> torch.Tensor:
    """``BCE_with_logits(logit_scale * (s_a - s_b), 1[expert_a > expert_b])`` (mean over pairs)."""
    if not (scores_a.shape == scores_b.shape == expert_a.shape == expert_b.shape):
        raise ConfigError(f"pairwise loss takes four [P] tensors; got {tuple(scores_a.shape)}, "
                          f"{tuple(scores_b.shape)}, {tuple(expert_a.shape)}, "
                          f"{tuple(expert_b.shape)}")
    labels = (expert_a > expert_b).to(torch.float32)
    logits = logit_scale * (scores_a.float() - scores_b.float())
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.device))


def pairwise_agreement(scores_a: torch.Tensor, scores_b: torch.Tensor, expert_a: torch.Tensor,
                       expert_b: torch.Tensor) -> torch.Tensor:
    """Fraction of pairs the scores order as the expert does (a proxy tie counts 0.5)."""
    proxy = torch.sign(scores_a.float() - scores_b.float())
    expert = torch.sign(expert_a.float() - expert_b.float()).to(proxy.device)
    return torch.where(proxy == 0, torch.full_like(proxy, 0.5), (proxy == expert).float()).mean()


__all__ = ["caption_groups", "multi_positive_targets", "multi_positive_info_nce",
           "pairwise_logistic_loss", "pairwise_agreement", "retrieval_accuracy",
           "soft_cross_entropy"]
