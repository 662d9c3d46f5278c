"""Pairwise losses that teach a proxy RM the expert RM's preferences (RG-LCD, Sec. 4.2).

Each prompt has three candidate latents, in this order: ``0`` the online student's ``f_theta``,
``1`` the EMA target's ``f_theta-``, ``2`` the ground-truth latent ``z0``. Scores come as
``[3, S]`` tensors (candidate, sample). The losses run over the three pairs
:data:`PAIRS` = ``(0, 1), (0, 2), (1, 2)``, each a 2-way softmax over ``[cand_i, cand_j]``, and
are **summed** over the pairs (as in the reference code):

- ``"distillation"``: ``KL(softmax(expert_ij) || softmax(proxy_ij))`` with ``batchmean``
  reduction. Expert scores are *logits* here: scores times the expert's logit scale (see
  :func:`expert_logits`).
- ``"cross_entropy"``: a hard label per pair, the expert's pairwise argmax; in pairs with the
  ground truth, the ground truth is the label (it always wins against generated candidates).

``smooth_gt_label``: in a ground-truth pair where the expert prefers the generated candidate,
the target becomes ``(0.5, 0.5)`` (for ``cross_entropy`` this replaces the forced "gt wins"
label in exactly those rows, so the loss stays proper).

Fixed reference defect: the reference's cross-entropy branch recomputed ``labels`` as the argmax
of the whole ``[3, B]`` expert tensor (over the batch axis, the wrong tensor). Here the label is
the argmax over each *pair*.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError

#: The candidate pairs, (i, j) with i < j; index 2 is the ground truth.
#: The candidate layout of every proxy update, along dim 0 of ``[3, S, ...]``: the online
#: student ``f_theta``, the EMA target ``f_theta-``, the ground truth ``z0``.
STUDENT, TARGET, GT = 0, 1, 2
CANDIDATES: tuple[str, ...] = ("student", "target", "ground_truth")
PAIRS: tuple[tuple[int, int], ...] = ((STUDENT, TARGET), (STUDENT, GT), (TARGET, GT))
GT_INDEX = 2
PROXY_LOSS_TYPES = ("distillation", "cross_entropy")


def pair_logits(scores: torch.Tensor, i: int, j: int) -> torch.Tensor:
    """``[S, 2]`` logits of the pair (i, j) from ``[3, S]`` scores."""
    return torch.stack([scores[i], scores[j]], dim=1)


def expert_logits(expert_scores: torch.Tensor, expert_logit_scale: float | torch.Tensor | None,
                  proxy_logit_scale: torch.Tensor) -> torch.Tensor:
    """The expert's preference logits: its scores times its logit scale.

    An expert without one (``None``) is scaled by the proxy's (detached) ``exp(logit_scale)``,
    as the reference does for ImageReward, so both softmaxes are on a comparable scale.
    """
    scale = proxy_logit_scale.detach() if expert_logit_scale is None else expert_logit_scale
    return expert_scores * scale


def _check(proxy: torch.Tensor, expert: torch.Tensor) -> None:
    if proxy.ndim != 2 or proxy.shape[0] != 3 or proxy.shape != expert.shape:
        raise ConfigError(
            f"pairwise proxy losses take [3, S] proxy and expert scores (student, target, gt); "
            f"got {tuple(proxy.shape)} and {tuple(expert.shape)}")


def expert_pair_targets(expert: torch.Tensor, i: int, j: int, soft: bool,
                        smooth_gt_label: bool) -> torch.Tensor:
    """``[S, 2]`` target probabilities for pair (i, j).

    ``soft``: the expert's softmax (distillation); else one-hot labels (cross-entropy) with the
    ground truth forced to win. ``smooth_gt_label`` turns gt-pair rows where the expert prefers
    the generated candidate into ``(0.5, 0.5)``.
    """
    logits = pair_logits(expert, i, j)
    if soft:
        target = F.softmax(logits.float(), dim=1)
    else:
        labels = logits.argmax(dim=1)
        if j == GT_INDEX:
            labels = torch.ones_like(labels)
        target = F.one_hot(labels, 2).float()
    if j == GT_INDEX and smooth_gt_label:
        generated_wins = logits.argmax(dim=1) == 0
        target = torch.where(generated_wins[:, None], torch.full_like(target, 0.5), target)
    return target


def distillation_loss(proxy_logits: torch.Tensor, expert_logits: torch.Tensor,
                      smooth_gt_label: bool = False) -> torch.Tensor:
    """Sum over pairs of ``KL(softmax(expert_ij) || softmax(proxy_ij))`` (batchmean)."""
    _check(proxy_logits, expert_logits)
    loss = proxy_logits.new_zeros((), dtype=torch.float32)
    for i, j in PAIRS:
        target = expert_pair_targets(expert_logits, i, j, soft=True,
                                     smooth_gt_label=smooth_gt_label)
        log_q = F.log_softmax(pair_logits(proxy_logits, i, j).float(), dim=1)
        loss = loss + F.kl_div(log_q, target, reduction="batchmean")
    return loss


def cross_entropy_loss(proxy_logits: torch.Tensor, expert_logits: torch.Tensor,
                       smooth_gt_label: bool = False) -> torch.Tensor:
    """Sum over pairs of the cross-entropy to the expert's pairwise winner (gt wins its pairs)."""
    _check(proxy_logits, expert_logits)
    loss = proxy_logits.new_zeros((), dtype=torch.float32)
    for i, j in PAIRS:
        target = expert_pair_targets(expert_logits, i, j, soft=False,
                                     smooth_gt_label=smooth_gt_label)
        loss = loss + F.cross_entropy(pair_logits(proxy_logits, i, j).float(), target)
    return loss


def pairwise_loss(loss_type: str, proxy_logits: torch.Tensor, expert_logits: torch.Tensor,
                  smooth_gt_label: bool = False) -> torch.Tensor:
    """Dispatch on ``loss_type`` (``"distillation"`` or ``"cross_entropy"``)."""
    if loss_type == "distillation":
        return distillation_loss(proxy_logits, expert_logits, smooth_gt_label)
    if loss_type == "cross_entropy":
        return cross_entropy_loss(proxy_logits, expert_logits, smooth_gt_label)
    raise ConfigError(f"proxy_loss_type must be one of {PROXY_LOSS_TYPES}, got {loss_type!r}")


@torch.no_grad()
def pairwise_accuracy(proxy_scores: torch.Tensor, expert_scores: torch.Tensor) -> torch.Tensor:
    """Fraction of (pair, sample) where the proxy's winner is the expert's winner.

    The mean over the three pairs of per-pair agreement, against the expert's own argmax (not
    the forced "gt wins" label), so it measures how well the proxy mimics the expert. Any
    positive rescaling of either side leaves it unchanged.
    """
    _check(proxy_scores, expert_scores)
    agreements = [
        (pair_logits(proxy_scores, i, j).argmax(1) == pair_logits(expert_scores, i, j).argmax(1))
        .float().mean()
        for i, j in PAIRS
    ]
    return torch.stack(agreements).mean()
