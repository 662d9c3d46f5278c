"""The reward-model contract, as checks a plugin runs in its own tests.

>>> from rewardkit.testing import check_reward_model
>>> check_reward_model(MyRewardModel(...))          # doctest: +SKIP

:func:`check_reward_model` calls the RM the way rewardkit does (``rm(images, prompts)``, the
checked call of :class:`rewardkit.rewards.RewardModel`) and raises ``AssertionError`` with a
message naming the RM and the failed property:

1. attributes: ``name`` a non-empty string, ``input_space`` "pixels" or "latents",
   ``differentiable`` a bool, ``logit_scale`` ``None`` or a positive finite number;
2. output: a float tensor of shape ``[B]``, finite;
3. input range (pixels): images in [0, 1], including all-black (0) and all-white (1) images;
4. gradients: when ``differentiable`` is true, ``score.sum().backward()`` gives finite, non-zero
   gradients on the images; when false, the RM still accepts images that require grad;
5. determinism: the same input twice gives the same scores;
6. batch independence: each image's score does not depend on the other images of the batch
   (scored alone and in a permuted batch, within ``atol``/``rtol``);
7. misuse: a 3-D tensor, a 1-channel image (pixels) and a wrong number of prompts each raise
   :class:`rewardkit.errors.RewardModelError` naming the RM.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from ..errors import RewardModelError

DEFAULT_PROMPTS: tuple[str, ...] = (
    "a photo of a red cat", "a blue house under the sky", "a green tree in the sea",
    "a small yellow car", "a painting of a white horse",
)


def check_reward_model(rm: Any, image_size: int = 64, batch: int = 3, *,
                       prompts: Sequence[str] | None = None, latent_channels: int = 4,
                       atol: float = 1e-4, rtol: float = 1e-3, seed: int = 0,
                       check_errors: bool = True) -> torch.Tensor:
    """Run the reward-model contract checks on ``rm``; return its scores of a random batch.

    Args:
        rm: a built reward model (a :class:`rewardkit.rewards.RewardModel`).
        image_size: side of the square test images (pixels) or latents.
        batch: batch size of the test inputs (at least 2, for the batch-independence check).
        prompts: the prompts to use (cycled to ``batch``); a fixed mixed set by default.
        latent_channels: channels of the test inputs when ``rm.input_space == "latents"``.
        atol: absolute tolerance of the determinism and batch-independence comparisons.
        rtol: relative tolerance of the same comparisons.
        seed: seed of the random test inputs.
        check_errors: also check that misuse raises ``RewardModelError`` naming the RM.

    Raises:
        AssertionError: naming the RM and the property it breaks.
    """
    if batch < 2:
        raise ValueError("check_reward_model needs batch >= 2 to check batch independence")
    name = _check_attributes(rm)
    where = f"reward model '{name}'"
    texts = [list(prompts or DEFAULT_PROMPTS)[i % len(prompts or DEFAULT_PROMPTS)]
             for i in range(batch)]
    images = _inputs(rm, batch, image_size, latent_channels, seed)

    scores = _score(rm, images, texts, where, "a random batch")
    _check_output(scores, batch, where, "a random batch")

    if rm.input_space == "pixels":
        for label, value in (("all-black images (0.0)", 0.0), ("all-white images (1.0)", 1.0)):
            edge = torch.full_like(images, value)
            _check_output(_score(rm, edge, texts, where, label), batch, where, label)
        binary = (images > 0.5).to(images.dtype)
        _check_output(_score(rm, binary, texts, where, "images of only 0s and 1s"), batch, where,
                      "images of only 0s and 1s")

    _check_gradients(rm, images, texts, where)

    again = _score(rm, images.clone(), texts, where, "the same batch again")
    _assert_close(again, scores, atol, rtol,
                  f"{where} is not deterministic: the same input gave {_fmt(scores)} then "
                  f"{_fmt(again)}")

    alone = torch.stack([_score(rm, images[i:i + 1], texts[i:i + 1], where, f"image {i} alone")[0]
                         for i in range(batch)])
    _assert_close(alone, scores, atol, rtol,
                  f"{where} is not batch independent: images scored in a batch gave "
                  f"{_fmt(scores)}, scored one at a time {_fmt(alone)}")
    order = torch.arange(batch - 1, -1, -1)
    permuted = _score(rm, images[order], [texts[i] for i in order.tolist()], where,
                      "a permuted batch")
    _assert_close(permuted, scores[order], atol, rtol,
                  f"{where} is not batch independent: reversing the batch gave {_fmt(permuted)}, "
                  f"expected {_fmt(scores[order])}")

    if check_errors:
        _check_misuse(rm, images, texts, where)
    return scores.detach()


# ---------------------------------------------------------------- parts


def _check_attributes(rm: Any) -> str:
    from ..rewards.base import RewardModel

    name = getattr(rm, "name", None)
    assert isinstance(name, str) and name, f"reward model {rm!r} has no 'name' string"
    assert not (isinstance(rm, RewardModel) and name == RewardModel.name), (
        f"{type(rm).__name__} does not set its own 'name' (it inherits RewardModel's "
        f"placeholder {RewardModel.name!r}); set name = \"your-rm\" on the class")
    where = f"reward model '{name}'"
    assert getattr(rm, "input_space", None) in ("pixels", "latents"), (
        f"{where}: input_space must be 'pixels' or 'latents', got {getattr(rm, 'input_space', None)!r}")
    assert isinstance(getattr(rm, "differentiable", None), bool), (
        f"{where}: differentiable must be a bool, got {getattr(rm, 'differentiable', None)!r}")
    scale = getattr(rm, "logit_scale", None)
    if scale is not None:
        assert isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0, (
            f"{where}: logit_scale must be None or a positive finite number, got {scale!r}")
    assert callable(getattr(rm, "score", None)), f"{where} has no score() method"
    return name


def _inputs(rm: Any, batch: int, size: int, channels: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    device = getattr(rm, "device", torch.device("cpu"))
    if rm.input_space == "pixels":
        images = torch.rand(batch, 3, size, size, generator=generator)
    else:
        images = torch.randn(batch, channels, size, size, generator=generator)
    return images.to(device)


def _score(rm: Any, images: torch.Tensor, texts: list[str], where: str, what: str) -> torch.Tensor:
    try:
        with torch.no_grad():
            return rm(images, texts)
    except RewardModelError as exc:
        raise AssertionError(f"{where} rejected {what}: {exc}") from exc
    except Exception as exc:
        raise AssertionError(f"{where} raised {type(exc).__name__} on {what}: {exc}") from exc


def _check_output(scores: Any, batch: int, where: str, what: str) -> None:
    assert isinstance(scores, torch.Tensor), (
        f"{where} returned {type(scores).__name__} for {what}, not a tensor")
    assert tuple(scores.shape) == (batch,), (
        f"{where} returned shape {tuple(scores.shape)} for {what}, expected ({batch},)")
    assert scores.is_floating_point(), f"{where} returned {scores.dtype} for {what}, not a float"
    assert torch.isfinite(scores).all(), f"{where} returned non-finite scores for {what}: {_fmt(scores)}"


def _check_gradients(rm: Any, images: torch.Tensor, texts: list[str], where: str) -> None:
    leaf = images.detach().clone().requires_grad_(True)
    if not rm.differentiable:
        try:
            scores = rm(leaf, texts)
        except Exception as exc:
            raise AssertionError(
                f"{where} (differentiable=False) failed on images that require grad; detach them "
                f"inside score(): {type(exc).__name__}: {exc}") from exc
        _check_output(scores, images.shape[0], where, "images that require grad")
        return
    try:
        scores = rm(leaf, texts)
    except Exception as exc:
        raise AssertionError(f"{where} raised {type(exc).__name__} on images that require grad: "
                             f"{exc}") from exc
    assert scores.requires_grad, (
        f"{where} claims differentiable=True but its scores carry no gradient (computed under "
        "no_grad, detached, or via numpy?)")
    scores.sum().backward()
    grad = leaf.grad
    assert grad is not None, (
        f"{where} claims differentiable=True but no gradient reached the images")
    assert torch.isfinite(grad).all(), f"{where} gave non-finite gradients on the images"
    assert grad.abs().sum() > 0, (
        f"{where} claims differentiable=True but the gradient on the images is zero everywhere")
    for i in range(images.shape[0]):
        assert grad[i].abs().sum() > 0, f"{where}: no gradient reached image {i} of the batch"


def _check_misuse(rm: Any, images: torch.Tensor, texts: list[str], where: str) -> None:
    cases = [("a 3-D tensor (no batch dimension)", images[0], texts[:1]),
             ("the wrong number of prompts", images, texts[:-1])]
    if rm.input_space == "pixels":
        cases.insert(1, ("1-channel images", images[:, :1], texts))
    for what, bad_images, bad_texts in cases:
        try:
            with torch.no_grad():
                rm(bad_images, bad_texts)
        except RewardModelError as exc:
            assert rm.name in str(exc), (
                f"{where}: the error for {what} does not name the RM: {exc}")
            continue
        except Exception as exc:
            raise AssertionError(f"{where} raised {type(exc).__name__} instead of "
                                 f"RewardModelError for {what}: {exc}") from exc
        raise AssertionError(f"{where} accepted {what} instead of raising RewardModelError")


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float,
                  message: str) -> None:
    actual, expected = actual.detach().float().cpu(), expected.detach().float().cpu()
    assert actual.shape == expected.shape and torch.allclose(actual, expected, atol=atol, rtol=rtol), message


def _fmt(scores: torch.Tensor) -> str:
    return "[" + ", ".join(f"{v:.6g}" for v in scores.detach().float().cpu().tolist()) + "]"
