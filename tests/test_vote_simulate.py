"""``rewardkit vote simulate``: synthetic raters answer through the page's session; a known
Bradley-Terry preference comes back out of ``vote report``."""

from __future__ import annotations

import math
import random
from typing import Sequence

import pytest
import torch

from rewardkit import cli
from rewardkit.errors import ConfigError
from rewardkit.hookspecs import hookimpl
from rewardkit.plugins import load_host, reset_host
from rewardkit.rewards.base import RewardModel
from rewardkit.vote.log import VoteLog
from rewardkit.vote.report import report
from rewardkit.vote.simulate import answer
from rewardkit.vote.study import Study
from test_vote import fake_study


class Brightness(RewardModel):
    """Mean grey level in 0-255 steps: the fake study's b image is one step above a's."""

    name = "test-grey"

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return images.mean((1, 2, 3)) * 255


class TestRewards:
    @hookimpl
    def register_reward_models(self, register):
        register(Brightness)


@pytest.fixture(autouse=True)
def grey():
    reset_host(load_host(extra_plugins=[("vote-simulate-rewards", TestRewards())]))
    yield
    reset_host()


def test_a_simulated_answer_is_a_bradley_terry_draw():
    rng = random.Random(0)
    draws = [answer(0.6, 0.4, 0.1, 0.0, rng) for _ in range(4000)]
    expected = 1 / (1 + math.exp(-2.0))
    assert draws.count("left") / 4000 == pytest.approx(expected, abs=0.025)  # 3.5 sd
    assert answer(0.5, 0.51, 0.1, 0.02, rng) == "tie"


def test_a_known_preference_comes_back_out_of_the_report(tmp_path, capsys):
    # b is one grey step brighter in every pair: at T = 1 / ln 3 a rater picks b 3 times in 4
    study = fake_study(tmp_path / "votes-images", prompts=[f"prompt {i}" for i in range(240)])
    votes = tmp_path / "votes.jsonl"
    assert cli.run(["vote", "simulate", str(votes), "--reward", "test-grey", "--raters", "2",
                    "--pairs", "120", "--temperature", str(1 / math.log(3))]) == 0
    assert "wrote 240 simulated votes (2 raters, test-grey)" in capsys.readouterr().err
    read = VoteLog(votes).read().votes
    assert {v["rater"] for v in read} == {"sim-1", "sim-2"} and len(read) == 240
    assert len({v["pair"] for v in read}) == 240  # fewest-voted first: the raters split them
    assert 0.35 < sum(v["left"] == "a" for v in read) / 240 < 0.65  # sides still random
    _, results = report(votes)
    rate = results["studies"][0]["criteria"]["overall"]["win_rate"]
    assert rate["ci_low"] < 0.25 < rate["ci_high"] and rate["votes"] == 240
    assert study.id == results["studies"][0]["study"]


def test_sharp_raters_always_pick_the_better_image_and_every_criterion_is_answered(tmp_path):
    fake_study(tmp_path / "votes-images")
    votes = tmp_path / "votes.jsonl"
    assert cli.run(["vote", "simulate", str(votes), "--reward", "test-grey", "--temperature",
                    "0.001", "--criteria", "overall,quality"]) == 0
    read = VoteLog(votes).read().votes
    assert len(read) == 3 * 5 * 2 and all(v["winner"] == "b" for v in read)
    assert sorted({v["criterion"] for v in read}) == ["overall", "quality"]


def test_a_study_without_images_is_named(tmp_path, capsys):
    assert cli.run(["vote", "simulate", str(tmp_path / "votes.jsonl"), "--reward",
                    "test-grey"]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert f"no study in {tmp_path / 'votes-images'} (no study.json)" in err
    study = fake_study(tmp_path / "votes-images")
    study.image("b", 3).unlink()
    with pytest.raises(ConfigError, match=r"image .*00003\.png is missing \(1 in all\)"):
        cli.run(["--debug", "vote", "simulate", str(tmp_path / "votes.jsonl"), "--reward",
                 "test-grey"])
    assert Study.load(tmp_path / "votes-images").id == study.id
