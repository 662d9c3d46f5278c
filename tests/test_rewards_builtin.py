"""Non-differentiable example RMs (jpeg-compressibility, rule-judge) and the weighted sum."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import rewardkit as rk
from rewardkit.errors import ConfigError, RewardModelError
from rewardkit.hookspecs import hookimpl
from rewardkit.plugins import load_host, reset_host
from rewardkit.rewards import RewardModel, WeightedReward
from rewardkit.rewards.rule_judge import prompt_colours
from rewardkit.testing import check_reward_model
from rewardkit.testing.tiny_clip import build_tiny_clip


def solid(colour, size=16, batch=1):
    return torch.tensor(colour, dtype=torch.float32).view(1, 3, 1, 1).expand(batch, 3, size, size).clone()


# ---------------------------------------------------------------- jpeg-compressibility


def test_jpeg_compressibility_contract_and_value():
    rm = rk.reward_model("jpeg-compressibility")
    assert rm.differentiable is False
    check_reward_model(rm, image_size=32, batch=3)
    images = torch.rand(2, 3, 32, 32)
    images[1] = 0.5  # flat: compresses far better than noise
    scores = rm(images, ["x", "y"])
    assert scores[1] > scores[0]
    # the value is -(JPEG bytes at quality 95) / 1000, computed independently here
    array = (images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95)
    assert scores[0].item() == pytest.approx(-buffer.tell() / 1000)


def test_jpeg_quality_parameter_changes_the_size():
    images = torch.rand(1, 3, 32, 32)
    high = rk.reward_model("jpeg-compressibility", quality=95)(images, ["x"])
    low = rk.reward_model("jpeg-compressibility", quality=20)(images, ["x"])
    assert low > high


# ---------------------------------------------------------------- rule-judge


def test_prompt_colour_parsing():
    assert prompt_colours("A Red car next to a grey wall, red again, and BLUE sky") == [
        "red", "gray", "blue"]
    assert prompt_colours("a reddish tree") == []  # whole words only


def test_rule_judge_scores_colour_agreement_and_clipping():
    rm = rk.reward_model("rule-judge")
    assert rm.differentiable is False
    check_reward_model(rm, image_size=16, batch=3)
    red, blue = solid((0.8, 0.1, 0.1)), solid((0.1, 0.2, 0.8))
    half = torch.cat([red[..., :8], blue[..., 8:]], dim=-1)
    images = torch.cat([red, blue, half, red])
    scores = rm(images, ["a red car", "a red car", "a red and blue flag", "a cat"])
    assert scores[0].item() == pytest.approx(1.0)
    assert scores[1].item() == pytest.approx(0.0)
    assert scores[2].item() == pytest.approx(0.5)  # each named colour covers half the image
    assert scores[3].item() == pytest.approx(0.0)  # no colour words: nothing to agree with
    clipped = rm(solid((1.0, 0.0, 0.0)), ["a red car"])  # pure red: every channel clipped
    assert clipped.item() == pytest.approx(1.0 - 0.5)
    stricter = rk.reward_model("rule-judge", clip_penalty=1.0)(solid((1.0, 0.0, 0.0)), ["a red car"])
    assert stricter.item() == pytest.approx(0.0)


# ---------------------------------------------------------------- weighted


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return str(build_tiny_clip(tmp_path_factory.mktemp("clip"), image_size=32))


def test_weighted_sum_of_differentiable_parts(clip_dir):
    rm = rk.reward_model("weighted", components={"clip-score": 1.0, "clip-score:second": -0.5},
                         params={"clip-score": {"model": clip_dir},
                                 "clip-score:second": {"model": clip_dir}})
    assert rm.differentiable is True and rm.input_space == "pixels"
    check_reward_model(rm, image_size=32, batch=2)
    images = torch.rand(2, 3, 32, 32)
    part = rk.reward_model("clip-score", model=clip_dir)
    with torch.no_grad():
        assert torch.allclose(rm(images, ["a", "b"]), 0.5 * part(images, ["a", "b"]), atol=1e-6)
    # two CLIP parts share a scale: the mix keeps it
    assert rm.logit_scale == pytest.approx(part.logit_scale)


def test_weighted_with_a_non_differentiable_part(clip_dir):
    rm = rk.reward_model("weighted", components={"clip-score": 1.0, "jpeg-compressibility": 0.1},
                         params={"clip-score": {"model": clip_dir}})
    assert rm.differentiable is False
    check_reward_model(rm, image_size=32, batch=2)
    clip = rk.reward_model("clip-score", model=clip_dir)
    jpeg = rk.reward_model("jpeg-compressibility")
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = clip(images, ["a", "b"]) + 0.1 * jpeg(images, ["a", "b"])
        assert torch.allclose(rm(images, ["a", "b"]), expected, atol=1e-5)
    # |w|-weighted mean of the scales of the parts that have one
    assert rm.logit_scale == pytest.approx(clip.logit_scale)
    assert rk.reward_model("weighted", components={"jpeg-compressibility": 1.0},
                           logit_scale=7.0).logit_scale == 7.0
    # no part has a scale: neither has the sum (the LRM's own scale is used, as for the part)
    assert jpeg.logit_scale is None
    assert rk.reward_model("weighted", components={"jpeg-compressibility": 1.0}).logit_scale is None


def test_weighted_configuration_errors(clip_dir):
    with pytest.raises(ConfigError, match="at least one component"):
        rk.reward_model("weighted", components={})
    with pytest.raises(ConfigError, match="params given for.*'rule-judge'"):
        rk.reward_model("weighted", components={"jpeg-compressibility": 1.0},
                        params={"rule-judge": {}})
    with pytest.raises(ConfigError, match="weight of 'rule-judge' must be a number"):
        rk.reward_model("weighted", components={"rule-judge": "lots"})
    with pytest.raises(Exception, match="no reward named 'no-such-rm'"):
        rk.reward_model("weighted", components={"no-such-rm": 1.0})


class _LatentNorm(RewardModel):
    """Scores latents by their negative mean square."""

    name = "latent-norm"
    input_space = "latents"

    def score(self, latents, prompts):
        return -latents.pow(2).mean(dim=(1, 2, 3))


class _NaNReward(RewardModel):
    """Always NaN."""

    name = "always-nan"

    def score(self, images, prompts):
        return torch.full((images.shape[0],), float("nan"))


class _TestPlugin:
    @hookimpl
    def register_reward_models(self, register):
        register(_LatentNorm)
        register(_NaNReward)


@pytest.fixture
def host_with_test_rms(fresh_host):
    reset_host(load_host(extra_plugins=[("test-rewards", _TestPlugin())]))
    yield
    reset_host()


def test_weighted_refuses_mixed_input_spaces(host_with_test_rms):
    with pytest.raises(ConfigError, match="mixes input spaces.*latent-norm: latents"):
        rk.reward_model("weighted", components={"latent-norm": 1.0, "rule-judge": 1.0})
    latent = rk.reward_model("weighted", components={"latent-norm": 2.0})
    assert latent.input_space == "latents"
    check_reward_model(latent, image_size=8, batch=2)


def test_weighted_names_the_failing_part(host_with_test_rms):
    rm = rk.reward_model("weighted", components={"rule-judge": 1.0, "always-nan": 1.0})
    with pytest.raises(RewardModelError, match="reward model 'always-nan' returned 2 non-finite"):
        rm(torch.rand(2, 3, 8, 8), ["a", "b"])


def test_weighted_from_built_models():
    jpeg, judge = rk.reward_model("jpeg-compressibility"), rk.reward_model("rule-judge")
    rm = WeightedReward.from_models([(jpeg, 0.5), (judge, 2.0)])
    images = torch.rand(2, 3, 16, 16)
    expected = 0.5 * jpeg(images, ["red", "blue"]) + 2.0 * judge(images, ["red", "blue"])
    assert torch.allclose(rm(images, ["red", "blue"]), expected)
    assert dict(rm.weights) == {"jpeg-compressibility": 0.5, "rule-judge": 2.0}
