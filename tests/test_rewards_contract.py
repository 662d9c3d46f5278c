"""The reward-model contract checker: it passes good RMs and fails each kind of broken one."""

from __future__ import annotations

import pytest
import torch

from rewardkit.errors import RewardModelError
from rewardkit.rewards import RewardModel
from rewardkit.testing import check_reward_model


class MeanColour(RewardModel):
    """A good differentiable RM: mean of the red channel minus the blue one."""

    name = "mean-colour"

    def score(self, images, prompts):
        return images[:, 0].mean(dim=(1, 2)) - images[:, 2].mean(dim=(1, 2))


class BatchDependent(MeanColour):
    name = "batch-dependent"

    def score(self, images, prompts):  # mixes in the batch mean: scores depend on the neighbours
        raw = super().score(images, prompts)
        return raw + 0.1 * raw.mean()


class NaNForBlack(MeanColour):
    name = "nan-for-black"

    def score(self, images, prompts):
        black = images.amax(dim=(1, 2, 3)) == 0
        return super().score(images, prompts) + torch.where(black, float("nan"), 0.0)


class ClaimsGradientButDetaches(MeanColour):
    name = "claims-gradient"

    def score(self, images, prompts):
        return super().score(images.detach(), prompts)


class ZeroGradient(MeanColour):
    name = "zero-gradient"

    def score(self, images, prompts):
        return (images * 0).sum(dim=(1, 2, 3)) + 1.0


class Noisy(MeanColour):
    name = "noisy"

    def score(self, images, prompts):
        return super().score(images, prompts) + torch.rand(images.shape[0])


class WrongShape(MeanColour):
    name = "wrong-shape"

    def score(self, images, prompts):
        return super().score(images, prompts)[:, None].repeat(1, 2)


class NumpyClaimsDifferentiable(MeanColour):
    name = "numpy-but-claims"

    def score(self, images, prompts):
        return torch.tensor(images.detach().numpy().mean(axis=(1, 2, 3)))


class UncheckedCall(MeanColour):
    """Overrides the checked call and so accepts wrong prompt counts and shapes."""

    name = "unchecked"

    def __call__(self, images, prompts):
        if images.ndim == 3:
            images = images[None]
        return self.score(images, prompts)


class BadError(MeanColour):
    name = "bad-error"

    def __call__(self, images, prompts):
        if images.ndim != 4 or len(prompts) != images.shape[0] or images.shape[1] != 3:
            raise RewardModelError("bad input")  # does not say which RM
        return super().__call__(images, prompts)


class NeedsPlainTensors(MeanColour):
    """Non-differentiable, but crashes on images that require grad (forgot to detach)."""

    name = "forgot-detach"
    differentiable = False

    def score(self, images, prompts):
        return torch.from_numpy(images.numpy().mean(axis=(1, 2, 3)))


class NonDifferentiableNumpy(MeanColour):
    name = "numpy-honest"
    differentiable = False

    def score(self, images, prompts):
        return torch.from_numpy(images.detach().numpy().mean(axis=(1, 2, 3)))


def test_good_rms_pass():
    scores = check_reward_model(MeanColour(), image_size=16, batch=4)
    assert scores.shape == (4,)
    check_reward_model(NonDifferentiableNumpy(), image_size=16, batch=2)


@pytest.mark.parametrize("rm, message", [
    (BatchDependent(), "batch-dependent' is not batch independent"),
    (NaNForBlack(), "nan-for-black' rejected all-black images.*non-finite"),
    (ClaimsGradientButDetaches(), "claims differentiable=True but its scores carry no gradient"),
    (ZeroGradient(), "gradient on the images is zero"),
    (Noisy(), "noisy' is not deterministic"),
    (WrongShape(), r"wrong-shape' rejected a random batch.*shape \(3, 2\)"),
    (NumpyClaimsDifferentiable(), "numpy-but-claims' claims differentiable=True"),
    (UncheckedCall(), "unchecked' accepted .* instead of raising RewardModelError"),
    (BadError(), "bad-error': the error for .* does not name the RM"),
    (NeedsPlainTensors(), "forgot-detach' .*failed on images that require grad"),
])
def test_broken_rms_fail_with_a_clear_message(rm, message):
    with pytest.raises(AssertionError, match=message):
        check_reward_model(rm, image_size=16, batch=3)


def test_bad_attributes_are_reported():
    rm = MeanColour()
    rm.logit_scale = -1.0
    with pytest.raises(AssertionError, match="logit_scale must be None or a positive"):
        check_reward_model(rm, image_size=8)
    rm = MeanColour()
    rm.input_space = "voxels"
    with pytest.raises(AssertionError, match="input_space must be"):
        check_reward_model(rm, image_size=8)


def test_base_call_names_the_rm_on_nan_and_wrong_shape():
    with pytest.raises(RewardModelError, match="reward model 'nan-for-black' returned 1 non-finite"):
        NaNForBlack()(torch.cat([torch.zeros(1, 3, 4, 4), torch.rand(1, 3, 4, 4)]), ["a", "b"])
    with pytest.raises(RewardModelError, match=r"reward model 'wrong-shape' returned shape \(2, 2\)"):
        WrongShape()(torch.rand(2, 3, 4, 4), ["a", "b"])
    with pytest.raises(RewardModelError, match="'mean-colour' got 2 images but 1 prompts"):
        MeanColour()(torch.rand(2, 3, 4, 4), ["a"])


def test_latent_space_rms_are_checked_on_latents():
    class LatentNorm(RewardModel):
        name = "latent-norm"
        input_space = "latents"

        def score(self, latents, prompts):
            return -latents.pow(2).mean(dim=(1, 2, 3))

    check_reward_model(LatentNorm(), image_size=8, batch=3, latent_channels=4)


class Unnamed(RewardModel):
    """Forgot ``name``: inherits the base class's placeholder."""

    differentiable = True

    def score(self, images, prompts):
        return images.mean((1, 2, 3))


def test_an_rm_that_does_not_set_its_name_fails_the_contract():
    with pytest.raises(AssertionError, match="Unnamed does not set its own 'name'"):
        check_reward_model(Unnamed(), image_size=8, batch=2)
