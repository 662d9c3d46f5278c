"""Pairwise proxy losses against hand computation, including the reference's CE-label defect."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rewardkit.errors import ConfigError
from rewardkit.proxies.losses import (
    PAIRS,
    cross_entropy_loss,
    distillation_loss,
    expert_logits,
    expert_pair_targets,
    pairwise_accuracy,
    pairwise_loss,
)

# [3, S]: rows student, target, gt; S = 2 samples.
PROXY = [[0.3, -1.0], [0.1, 2.0], [1.5, 0.2]]
EXPERT = [[2.0, 0.0], [1.0, 1.0], [0.5, 3.0]]


def softmax2(a: float, b: float) -> tuple[float, float]:
    ea, eb = math.exp(a), math.exp(b)
    return ea / (ea + eb), eb / (ea + eb)


def hand_kl(proxy, expert, smooth=False) -> float:
    total = 0.0
    for i, j in PAIRS:
        terms = []
        for k in range(len(proxy[0])):
            p = softmax2(expert[i][k], expert[j][k])
            if smooth and j == 2 and expert[i][k] > expert[j][k]:
                p = (0.5, 0.5)
            q = softmax2(proxy[i][k], proxy[j][k])
            terms.append(sum(pk * math.log(pk / qk) for pk, qk in zip(p, q)))
        total += sum(terms) / len(terms)  # batchmean
    return total


def hand_labels(expert) -> dict[tuple[int, int], list[int]]:
    labels = {}
    for i, j in PAIRS:
        labels[(i, j)] = [1 if j == 2 else (0 if expert[i][k] >= expert[j][k] else 1)
                          for k in range(len(expert[0]))]
    return labels


def hand_ce(proxy, labels) -> float:
    total = 0.0
    for i, j in PAIRS:
        terms = []
        for k, label in enumerate(labels[(i, j)]):
            q = softmax2(proxy[i][k], proxy[j][k])
            terms.append(-math.log(q[label]))
        total += sum(terms) / len(terms)
    return total


def test_distillation_matches_hand_computation():
    loss = distillation_loss(torch.tensor(PROXY), torch.tensor(EXPERT))
    assert float(loss) == pytest.approx(hand_kl(PROXY, EXPERT), rel=1e-5)


def test_distillation_is_zero_when_the_proxy_matches_the_expert():
    expert = torch.tensor(EXPERT)
    assert float(distillation_loss(expert.clone(), expert)) == pytest.approx(0.0, abs=1e-6)
    # Pairwise softmaxes only see differences: a shift per sample changes nothing.
    assert float(distillation_loss(expert + torch.tensor([5.0, -2.0]), expert)) == pytest.approx(
        0.0, abs=1e-5)


def test_distillation_smooth_gt_label():
    loss = distillation_loss(torch.tensor(PROXY), torch.tensor(EXPERT), smooth_gt_label=True)
    assert float(loss) == pytest.approx(hand_kl(PROXY, EXPERT, smooth=True), rel=1e-5)
    assert hand_kl(PROXY, EXPERT, smooth=True) != pytest.approx(hand_kl(PROXY, EXPERT))


def test_cross_entropy_labels_per_pair_and_gt_wins():
    expert = torch.tensor(EXPERT)
    labels = hand_labels(EXPERT)
    # pair (0, 1): sample 0 student wins (2 > 1), sample 1 target wins; gt pairs forced to gt.
    assert labels[(0, 1)] == [0, 1]
    assert labels[(0, 2)] == [1, 1] and labels[(1, 2)] == [1, 1]
    for (i, j), expected in labels.items():
        target = expert_pair_targets(expert, i, j, soft=False, smooth_gt_label=False)
        assert target.argmax(1).tolist() == expected
    loss = cross_entropy_loss(torch.tensor(PROXY), expert)
    assert float(loss) == pytest.approx(hand_ce(PROXY, labels), rel=1e-5)


def test_hard_label_ties_go_to_the_first_candidate():
    expert = torch.tensor([[1.0], [1.0], [0.0]])
    assert expert_pair_targets(expert, 0, 1, soft=False, smooth_gt_label=False).tolist() == [
        [1.0, 0.0]]


def test_cross_entropy_smooth_gt_label_softens_rows_the_expert_gives_to_the_generated():
    expert = torch.tensor(EXPERT)
    target = expert_pair_targets(expert, 0, 2, soft=False, smooth_gt_label=True)
    # sample 0: expert prefers the student (2.0 > 0.5) -> (0.5, 0.5); sample 1: gt wins.
    assert target.tolist() == [[0.5, 0.5], [0.0, 1.0]]


def test_reference_cross_entropy_label_defect_is_not_copied():
    """The reference took ``expert_rewards.argmax(dim=1)`` over the whole [3, B] tensor."""
    expert = torch.tensor([[0.0, 5.0, 1.0], [9.0, 1.0, 0.0], [2.0, 8.0, 0.0]])  # [3, B=3]
    proxy = torch.randn(3, 3, generator=torch.Generator().manual_seed(0))
    buggy_labels = expert.argmax(dim=1)  # one label per *candidate*, indexing the batch
    assert buggy_labels.tolist() == [1, 0, 1]
    correct = hand_labels(expert.tolist())
    assert correct[(0, 1)] == [1, 0, 0]  # per pair: 0<9, 5>1, 1>0
    ours = float(cross_entropy_loss(proxy, expert))
    assert ours == pytest.approx(hand_ce(proxy.tolist(), correct), rel=1e-5)
    buggy = 0.0
    for i, j in PAIRS:
        logits = torch.stack([proxy[i], proxy[j]], dim=1)
        labels = torch.ones_like(buggy_labels) if j == 2 else buggy_labels
        buggy += float(F.cross_entropy(logits, labels))
    assert ours != pytest.approx(buggy, rel=1e-3)


def test_pairwise_accuracy_hand_computation_and_scale_invariance():
    proxy, expert = torch.tensor(PROXY), torch.tensor(EXPERT)
    # (0,1): proxy winners [0, 1], expert [0, 1] -> 1
    # (0,2): proxy [1, 1], expert [0, 1] -> 1/2 ; (1,2): proxy [1, 0], expert [0, 1] -> 0
    assert float(pairwise_accuracy(proxy, expert)) == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert float(pairwise_accuracy(proxy * 3.0, expert * 100.0)) == pytest.approx(0.5)
    assert float(pairwise_accuracy(expert, expert)) == 1.0


def test_expert_logits_use_the_expert_scale_else_the_proxy_scale():
    scores = torch.tensor(EXPERT)
    proxy_scale = torch.tensor(14.0, requires_grad=True)
    assert torch.equal(expert_logits(scores, 100.0, proxy_scale), scores * 100.0)
    fallback = expert_logits(scores, None, proxy_scale)
    assert torch.allclose(fallback, scores * 14.0) and not fallback.requires_grad


def test_pairwise_loss_dispatch_and_errors():
    proxy, expert = torch.tensor(PROXY), torch.tensor(EXPERT)
    assert torch.equal(pairwise_loss("distillation", proxy, expert),
                       distillation_loss(proxy, expert))
    assert torch.equal(pairwise_loss("cross_entropy", proxy, expert),
                       cross_entropy_loss(proxy, expert))
    with pytest.raises(ConfigError, match="proxy_loss_type"):
        pairwise_loss("hinge", proxy, expert)
    with pytest.raises(ConfigError, match=r"\[3, S\]"):
        distillation_loss(proxy[:2], expert[:2])


def test_losses_have_gradients_for_the_proxy_only():
    proxy = torch.tensor(PROXY, requires_grad=True)
    expert = torch.tensor(EXPERT, requires_grad=True)
    for loss_fn in (distillation_loss, cross_entropy_loss):
        proxy.grad = None
        loss_fn(proxy, expert.detach()).backward()
        assert proxy.grad is not None and proxy.grad.abs().sum() > 0
