"""The online proxy (LRM) update: one optimiser step on the expert's pairwise judgements.

In RG-LCD the LRM is frozen while the student steps; after the student step the expert RM
scores three candidates per prompt (student ``f_theta``, target ``f_theta-``, ground truth
``z0``) without gradients, and :meth:`ProxyUpdater.step` trains the LRM on those judgements.

Fixed reference defect: the reference called ``requires_grad_(True)`` on the whole LRM before
every update, unfreezing *all* layers after the first step although only a few were meant to
train.
Here the optimiser holds only :meth:`ProxyRewardModel.trainable_parameters`, :meth:`step`
unfreezes exactly that set for the duration of the step and freezes the whole proxy again
afterwards (also when the step raises).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ..checks import nonfinite_count, require
from ..cpu_values import cpu_tolist
from ..distributed import average_gradients
from ..errors import ConfigError, RewardModelError
from .base import ProxyRewardModel
from .losses import (CANDIDATES, PROXY_LOSS_TYPES, expert_logits, pairwise_accuracy,
                     pairwise_loss)

DEFAULT_PROXY_LR = 3.3e-6  # the reference code's default learning rate of the LRM


class ProxyUpdater:
    """Trains a proxy RM online from expert scores of (student, target, gt) candidates.

    ``optimizer`` defaults to AdamW over the proxy's trainable set with ``lr`` (3.3e-6, the
    reference default), betas (0.9, 0.999), no weight decay. ``loss_scale`` multiplies the loss
    before backward (1 in the reference). ``max_grad_norm`` optionally clips
    (the reference does not). Under ``torch.distributed`` the gradients are averaged across
    ranks before the step, so every rank keeps the same proxy without wrapping it in DDP.
    """

    def __init__(self, proxy: ProxyRewardModel, optimizer: torch.optim.Optimizer | None = None,
                 loss_type: str = "distillation", smooth_gt_label: bool = False,
                 lr: float = DEFAULT_PROXY_LR, betas: tuple[float, float] = (0.9, 0.999),
                 weight_decay: float = 0.0, loss_scale: float = 1.0,
                 max_grad_norm: float | None = None, rehearsal: Any = None,
                 generator: torch.Generator | None = None) -> None:
        if loss_type not in PROXY_LOSS_TYPES:
            raise ConfigError(f"proxy_loss_type must be one of {PROXY_LOSS_TYPES}, got {loss_type!r}")
        self.proxy = proxy
        self.loss_type = loss_type
        self.smooth_gt_label = smooth_gt_label
        self.loss_scale = loss_scale
        self.max_grad_norm = max_grad_norm
        self.rehearsal = rehearsal  # a rewardkit.proxies.rehearsal.Rehearsal, or None
        self.generator = generator
        self.params = list(proxy.trainable_parameters())
        if optimizer is None and self.params:
            optimizer = torch.optim.AdamW(self.params, lr=lr, betas=betas,
                                          weight_decay=weight_decay)
        self.optimizer = optimizer  # None: a static proxy (nothing trainable), metrics only
        proxy.freeze()

    # -------------------------------------------------------------- the step

    def step(self, candidate_latents: torch.Tensor, prompt_embeds: torch.Tensor,
             expert_scores: torch.Tensor,
             expert_logit_scale: float | torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One update; returns ``{"proxy_loss", "proxy_accuracy", "proxy_logit_scale"}`` as 0-d
        tensors on the proxy's device (``float()`` reads one; the training step reads them all
        with its other metrics in one transfer).

        ``candidate_latents``: ``[3, S, C, h, w]`` scaled latents (student, target, gt);
        ``prompt_embeds``: ``[S, L, D]``, the prompts of those S samples (same order);
        ``expert_scores``: ``[3, S]`` the expert RM's scores; ``expert_logit_scale``: the
        expert's score-to-logit multiplier, ``None`` to use the proxy's own (see
        :func:`rewardkit.proxies.losses.expert_logits`). Accuracy and loss are measured before
        the update.
        """
        self._check(candidate_latents, prompt_embeds, expert_scores)
        three, size = candidate_latents.shape[:2]
        device = next(self.proxy.parameters()).device
        latents = candidate_latents.detach().reshape(three * size, *candidate_latents.shape[2:])
        embeds = prompt_embeds.detach().repeat(3, 1, 1)
        expert = expert_scores.detach().to(device=device, dtype=torch.float32)

        was_training = self.proxy.training
        try:
            self.proxy.unfreeze()
            self.proxy.train()
            with torch.enable_grad():
                proxy_logits = self.proxy.logits(latents.to(device), embeds.to(device))
                proxy_logits = proxy_logits.float().reshape(3, size)
                targets = expert_logits(expert, expert_logit_scale,
                                        self.proxy.logit_scale_value())
                loss = pairwise_loss(self.loss_type, proxy_logits, targets, self.smooth_gt_label)
                total = loss
                if self.rehearsal is not None:
                    rehearsal_loss = self.rehearsal.loss(self.proxy, self.generator)
                    total = loss + rehearsal_loss
                if self.optimizer is not None:
                    (total * self.loss_scale).backward()
                    average_gradients(self.params)
                    if self.max_grad_norm is not None:
                        torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
        finally:
            self.proxy.freeze()
            self.proxy.train(was_training)
        metrics = {} if self.rehearsal is None else {
            "proxy_rehearsal_loss": rehearsal_loss.detach()}
        return {
            **metrics,
            "proxy_loss": loss.detach(),
            "proxy_accuracy": pairwise_accuracy(proxy_logits.detach(), expert),
            "proxy_logit_scale": self.proxy.logit_scale_value().detach(),
        }

    # -------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        """The optimiser state (the proxy's weights are saved with ``save_pretrained``)."""
        return {"optimizer": self.optimizer.state_dict() if self.optimizer else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        if self.optimizer is not None and state.get("optimizer") is not None:
            self.optimizer.load_state_dict(state["optimizer"])

    # -------------------------------------------------------------- helpers

    @staticmethod
    def _check(latents: torch.Tensor, embeds: torch.Tensor, scores: torch.Tensor) -> None:
        if latents.ndim != 5 or latents.shape[0] != 3:
            raise ConfigError(
                f"proxy update takes candidate latents [3, S, C, h, w] (student, target, gt), "
                f"got {tuple(latents.shape)}")
        size = latents.shape[1]
        if embeds.ndim != 3 or embeds.shape[0] != size:
            raise ConfigError(
                f"proxy update got {size} candidates per kind but prompt embeddings "
                f"{tuple(embeds.shape)}; pass [S, L, D] in the same order")
        if tuple(scores.shape) != (3, size):
            raise RewardModelError(
                f"expert scores for the proxy update have shape {tuple(scores.shape)}, "
                f"expected (3, {size})")
        require(nonfinite_count(scores),
                lambda bad, _: f"expert scores for the proxy update contain {bad} NaN or inf",
                RewardModelError)


# ---------------------------------------------------------------- candidate sub-batch


@dataclass
class ProxyCandidates:
    """The sub-batch the expert judges: latents ``[3, S, C, h, w]`` and their prompts.

    ``captions[k]`` and ``prompt_embeds[k]`` belong to ``latents[:, k]`` for every ``k``.
    """

    latents: torch.Tensor
    prompt_embeds: torch.Tensor
    captions: list[str]
    indices: torch.Tensor


def sample_candidates(student_x0: torch.Tensor, target_x0: torch.Tensor, gt_latents: torch.Tensor,
                      prompt_embeds: torch.Tensor, captions: Sequence[str], proxy_batch_size: int,
                      generator: torch.Generator | None = None) -> ProxyCandidates:
    """A random sub-batch of ``proxy_batch_size`` samples with their three candidates.

    Fixed reference defect: the reference permuted the latents but passed the *unpermuted*
    captions to the expert. Here latents, prompt embeddings and captions are all indexed with
    the same ``indices``. Everything is detached (the expert and the proxy update must not
    reach the student's graph).
    """
    batch = student_x0.shape[0]
    if not (target_x0.shape[0] == gt_latents.shape[0] == prompt_embeds.shape[0]
            == len(captions) == batch):
        raise ConfigError(
            f"candidate sub-batch needs equal batch sizes; got student {batch}, target "
            f"{target_x0.shape[0]}, gt {gt_latents.shape[0]}, prompt embeds "
            f"{prompt_embeds.shape[0]}, captions {len(captions)}")
    if proxy_batch_size < 1:
        raise ConfigError(f"proxy_batch_size must be >= 1, got {proxy_batch_size}")
    indices = torch.randperm(batch, generator=generator)[:proxy_batch_size]
    device_indices = indices.to(student_x0.device)
    latents = torch.stack([  # in the order STUDENT, TARGET, GT
        student_x0.detach()[device_indices],
        target_x0.detach().to(student_x0.dtype)[device_indices],
        gt_latents.detach().to(student_x0.dtype)[device_indices],
    ])
    return ProxyCandidates(
        latents=latents,
        prompt_embeds=prompt_embeds.detach()[indices.to(prompt_embeds.device)],
        captions=[captions[i] for i in cpu_tolist(indices)],
        indices=indices,
    )


@torch.no_grad()
def score_candidates(candidates: ProxyCandidates, expert: Callable[[torch.Tensor, list[str]], torch.Tensor],
                     chunk_size: int) -> torch.Tensor:
    """The expert's scores ``[3, S]`` of the candidates (``expert(latents, captions)``, e.g.
    decode then RM), ``chunk_size`` latents at a time so decoding ``3 S`` latents fits in memory."""
    size = candidates.latents.shape[1]
    flat = candidates.latents.flatten(0, 1)
    captions = candidates.captions * len(CANDIDATES)
    chunks = [expert(flat[i:i + chunk_size], captions[i:i + chunk_size])
              for i in range(0, flat.shape[0], chunk_size)]
    return torch.cat(chunks).view(len(CANDIDATES), size)
