"""The online proxy update: only the trainable set moves, it stays locked, and the LRM learns."""

from __future__ import annotations

import pytest
import torch

from rewardkit.errors import ConfigError, RewardModelError
from rewardkit.proxies import LatentRewardModel, ProxyUpdater, sample_candidates
from rewardkit.proxies.losses import pairwise_accuracy

TEXT_DIM = 16


def small(trainable: str = "last", **overrides) -> LatentRewardModel:
    torch.manual_seed(0)
    config = dict(text_dim=TEXT_DIM, embed_dim=32, image_widths=(16, 32), text_width=32,
                  text_heads=2, trainable=trainable)
    return LatentRewardModel(**{**config, **overrides})


def random_step_inputs(size: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(3, size, 4, 8, 8, generator=g), torch.randn(size, 5, TEXT_DIM, generator=g),
            torch.randn(3, size, generator=g))


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("trainable", ["heads", "last", "all"])
def test_step_moves_exactly_the_trainable_set_and_refreezes(trainable):
    model = small(trainable)
    updater = ProxyUpdater(model, lr=1e-2)
    optimised = {id(p) for group in updater.optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in model.trainable_parameters()}
    before = snapshot(model)
    metrics = updater.step(*random_step_inputs())
    assert set(metrics) >= {"proxy_loss", "proxy_accuracy"}
    assert metrics["proxy_loss"] > 0 and 0.0 <= metrics["proxy_accuracy"] <= 1.0
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    trainable_names = model.trainable_parameter_names()
    assert changed and changed <= trainable_names
    assert "logit_scale" in changed
    assert not any(p.requires_grad for p in model.parameters())  # frozen again
    assert all(p.grad is None for p in model.parameters())


def test_reference_unfreeze_all_defect_is_not_copied():
    """The reference set requires_grad_(True) on the whole LRM before every update."""
    model = small("heads")
    updater = ProxyUpdater(model, lr=1e-2)
    locked = {n for n, _ in model.named_parameters()} - model.trainable_parameter_names()
    before = snapshot(model)
    for seed in range(3):
        model.requires_grad_(True)  # even if a caller unfreezes everything...
        updater.step(*random_step_inputs(seed=seed))
        assert not any(p.requires_grad for p in model.parameters())
    for name in locked:  # ...the locked layers never move
        assert torch.equal(dict(model.named_parameters())[name], before[name]), name


def test_static_proxy_reports_metrics_without_training():
    model = small("none")
    updater = ProxyUpdater(model)
    assert updater.optimizer is None
    before = snapshot(model)
    metrics = updater.step(*random_step_inputs())
    assert 0.0 <= metrics["proxy_accuracy"] <= 1.0
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_expert_scores_get_no_gradient_and_the_student_graph_is_untouched():
    model = small("all")
    updater = ProxyUpdater(model, lr=1e-3)
    latents, embeds, scores = random_step_inputs()
    student = torch.randn(4, 4, 8, 8, requires_grad=True)
    candidates = torch.stack([student * 2, latents[1], latents[2]])  # carries the student's graph
    expert = scores.clone().requires_grad_(True)
    updater.step(candidates, embeds, expert)
    assert expert.grad is None and student.grad is None


def test_expert_without_logit_scale_is_scaled_by_the_proxy_scale():
    latents, embeds, scores = random_step_inputs()
    with_none = ProxyUpdater(small("none")).step(latents, embeds, scores, None)
    scale = float(small("none").logit_scale_value())
    with_value = ProxyUpdater(small("none")).step(latents, embeds, scores, scale)
    assert float(with_none["proxy_loss"]) == pytest.approx(float(with_value["proxy_loss"]), rel=1e-5)
    other = ProxyUpdater(small("none")).step(latents, embeds, scores, 100.0)
    assert float(other["proxy_loss"]) != pytest.approx(float(with_value["proxy_loss"]), rel=1e-3)


def test_optimizer_state_round_trip():
    model = small("heads")
    updater = ProxyUpdater(model, lr=1e-2)
    updater.step(*random_step_inputs())
    state = updater.state_dict()
    fresh = ProxyUpdater(small("heads"), lr=1e-2)
    fresh.load_state_dict(state)
    restored = fresh.optimizer.state_dict()["state"]
    original = updater.optimizer.state_dict()["state"]
    assert restored.keys() == original.keys() and len(original) > 0
    for key in original:
        assert torch.equal(restored[key]["exp_avg"], original[key]["exp_avg"])


def test_bad_inputs_are_named():
    updater = ProxyUpdater(small())
    latents, embeds, scores = random_step_inputs()
    with pytest.raises(ConfigError, match=r"\[3, S, C, h, w\]"):
        updater.step(latents[:2], embeds, scores[:2])
    with pytest.raises(ConfigError, match="prompt embeddings"):
        updater.step(latents, embeds[:3], scores)
    with pytest.raises(RewardModelError, match="shape"):
        updater.step(latents, embeds, scores[:, :3])
    with pytest.raises(RewardModelError, match="NaN"):
        updater.step(latents, embeds, torch.full_like(scores, float("nan")))
    assert not any(p.requires_grad for p in updater.proxy.parameters())
    with pytest.raises(ConfigError, match="proxy_loss_type"):
        ProxyUpdater(small(), loss_type="hinge")


def test_sample_candidates_keeps_captions_aligned_with_latents_and_embeds():
    """The reference passed unpermuted captions to the expert; here all share the indices."""
    batch = 6
    student = torch.arange(batch, dtype=torch.float32).view(batch, 1, 1, 1).expand(batch, 4, 2, 2)
    student = student.clone().requires_grad_(True)
    target, gt = student.detach() + 100, student.detach() + 200
    embeds = torch.arange(batch, dtype=torch.float32).view(batch, 1, 1).expand(batch, 3, TEXT_DIM)
    captions = [f"prompt {k}" for k in range(batch)]
    chosen = sample_candidates(student, target, gt, embeds, captions, proxy_batch_size=4,
                               generator=torch.Generator().manual_seed(3))
    assert chosen.latents.shape == (3, 4, 4, 2, 2) and not chosen.latents.requires_grad
    assert chosen.indices.tolist() != list(range(4))  # a real permutation for this seed
    for k, index in enumerate(chosen.indices.tolist()):
        assert chosen.captions[k] == f"prompt {index}"
        assert float(chosen.prompt_embeds[k, 0, 0]) == index
        assert [float(chosen.latents[c, k, 0, 0, 0]) for c in range(3)] == [
            index, index + 100, index + 200]
    with pytest.raises(ConfigError, match="captions"):
        sample_candidates(student, target, gt, embeds, captions[:5], proxy_batch_size=4)


# ---------------------------------------------------------------- learning


def synthetic_batch(size: int, generator: torch.Generator, prompt_vectors: torch.Tensor):
    """Expert: prompt class 0 prefers a high mean of latent channel 0, class 1 a low one.

    The ground truth is usually the best candidate (as for real data), so the cross-entropy
    loss's "gt wins" rule mostly agrees with the expert.
    """
    cls = torch.randint(0, 2, (size,), generator=generator)
    embeds = (prompt_vectors[cls][:, None, :].repeat(1, 4, 1)
              + 0.1 * torch.randn(size, 4, TEXT_DIM, generator=generator))
    sign = 1.0 - 2.0 * cls.float()
    offsets = torch.rand(3, size, generator=generator) * 2 - 1
    offsets[2] = sign * (0.5 + 0.5 * torch.rand(size, generator=generator))
    latents = torch.randn(3, size, 4, 8, 8, generator=generator)
    latents[:, :, 0] += offsets[:, :, None, None]
    expert = sign[None] * latents[:, :, 0].mean((-1, -2))
    return latents, embeds, expert


@pytest.mark.parametrize("loss_type", ["distillation", "cross_entropy"])
def test_pairwise_accuracy_rises_on_a_synthetic_preference_task(loss_type):
    prompt_vectors = torch.randn(2, TEXT_DIM, generator=torch.Generator().manual_seed(7))
    model = small("all")
    updater = ProxyUpdater(model, loss_type=loss_type, lr=1e-3)
    held_out = synthetic_batch(256, torch.Generator().manual_seed(123), prompt_vectors)

    def accuracy() -> float:
        latents, embeds, expert = held_out
        with torch.no_grad():
            scores = model(latents.flatten(0, 1), embeds.repeat(3, 1, 1)).view(3, -1)
        return float(pairwise_accuracy(scores, expert))

    start = accuracy()
    generator = torch.Generator().manual_seed(1)
    for _ in range(150):
        updater.step(*synthetic_batch(32, generator, prompt_vectors), expert_logit_scale=10.0)
    end = accuracy()
    assert start < 0.65
    assert end > 0.85 and end > start + 0.25


def test_rehearsal_teaches_what_the_online_candidates_never_show():
    from rewardkit.proxies.preference_set import PreferenceSet, preference_accuracy
    from rewardkit.proxies.rehearsal import Rehearsal

    prompt_vectors = torch.randn(2, TEXT_DIM, generator=torch.Generator().manual_seed(7))

    def as_set(seed: int, n: int) -> PreferenceSet:
        latents, embeds, expert = synthetic_batch(n, torch.Generator().manual_seed(seed),
                                                  prompt_vectors)
        return PreferenceSet(latents=latents.flatten(0, 1), prompt_embeds=embeds,
                             prompt_index=torch.arange(n).repeat(3), captions=["p"] * n,
                             kinds=["a"] * n + ["b"] * n + ["ground-truth"] * n,
                             expert=expert.flatten())

    train, heldout = as_set(5, 2048), as_set(123, 128)

    def trained(rehearsal) -> float:
        model = small("all")
        updater = ProxyUpdater(model, lr=1e-3, rehearsal=rehearsal,
                               generator=torch.Generator().manual_seed(0))
        generator = torch.Generator().manual_seed(1)
        for _ in range(150):
            # online judgements without any signal (all ties: the loss pulls scores together)
            latents, embeds, _ = synthetic_batch(16, generator, prompt_vectors)
            metrics = updater.step(latents, embeds, torch.zeros(3, 16), expert_logit_scale=10.0)
        assert ("proxy_rehearsal_loss" in metrics) == (rehearsal is not None)
        return preference_accuracy(model, heldout)["proxy_heldout_accuracy"]

    without = trained(None)
    with_rehearsal = trained(Rehearsal(train, batch_size=64))
    assert without < 0.65 and with_rehearsal > 0.72
