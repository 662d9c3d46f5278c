"""``rewardkit vote report``: the statistics on synthetic votes of known win rate, rater and
RM agreement on constructed cases, the markdown, and bad votes files."""

from __future__ import annotations

import json
import math
from typing import Sequence

import numpy as np
import pytest
import torch

from rewardkit import cli
from rewardkit.errors import ConfigError
from rewardkit.hookspecs import hookimpl
from rewardkit.plugins import load_host, reset_host
from rewardkit.rewards.base import RewardModel
from rewardkit.vote.log import VoteLog, winner_of
from rewardkit.vote.report import report, summarise
from rewardkit.vote.session import VotingSession
from rewardkit.vote.stats import cluster_bootstrap, rater_agreement, rm_agreement, win_rate
from test_vote import fake_study


def synthetic(winners: Sequence[str], raters: Sequence[str] | None = None,
              pairs: Sequence[int] | None = None, categories: Sequence[str] | None = None,
              criterion: str = "overall", seed: int = 0) -> list[dict]:
    """Votes with the given winners (sides drawn at random), one pair each unless given."""
    rng = np.random.default_rng(seed)
    votes = []
    for n, winner in enumerate(winners):
        left = "a" if rng.random() < 0.5 else "b"
        choice = winner if winner in ("tie", "skip") else ("left" if winner == left else "right")
        assert winner_of(choice, left) == winner
        votes.append({"study": "s", "pair": pairs[n] if pairs else n, "prompt": f"p{n}",
                      "category": categories[n] if categories else "", "seed": n,
                      "model_a": "student (2 steps)", "model_b": "teacher (50 steps)",
                      "left": left, "criterion": criterion, "choice": choice, "winner": winner,
                      "rater": raters[n] if raters else "r", "time": "2025-01-01T00:00:00Z",
                      "image_a": "a.png", "image_b": "b.png"})
    return votes


def draw(count: int, p_a: float, p_tie: float, rng) -> list[str]:
    return list(rng.choice(["a", "tie", "b"], size=count, p=[p_a, p_tie, 1 - p_a - p_tie]))


# ---------------------------------------------------------------- the statistics


def test_a_known_win_rate_is_recovered_within_its_interval():
    rng = np.random.default_rng(1)
    truth = 0.6 + 0.1 / 2  # P(a) 0.6, P(tie) 0.1: ties are half a win
    result = win_rate(synthetic(draw(600, 0.6, 0.1, rng)))
    assert result["ci_low"] < truth < result["ci_high"]
    assert abs(result["win_rate"] - truth) < 0.05
    # the interval's width is the normal one, 2 x 1.96 x sd / sqrt(n), within 15%
    sd = math.sqrt(0.6 * 1 + 0.1 * 0.25 - truth ** 2)
    assert (result["ci_high"] - result["ci_low"]) == pytest.approx(2 * 1.96 * sd / math.sqrt(600),
                                                                  rel=0.15)
    assert (result["votes"], result["pairs"], result["raters"]) == (600, 600, 1)
    assert result["a"] + result["b"] + result["tie"] == 600


def test_the_interval_covers_the_truth_about_95_percent_of_the_time():
    rng = np.random.default_rng(2)
    covered = 0
    for study in range(200):
        result = win_rate(synthetic(draw(120, 0.7, 0.0, rng)), seed=study)
        covered += result["ci_low"] <= 0.7 <= result["ci_high"]
    assert 0.89 <= covered / 200 <= 0.99


def test_ties_count_half_and_skips_not_at_all():
    assert win_rate(synthetic(["tie"] * 5))["win_rate"] == 0.5
    assert win_rate(synthetic(["a", "b", "tie", "tie", "skip"]))["win_rate"] == 0.5
    assert win_rate(synthetic(["a", "tie", "skip", "skip"]))["win_rate"] == 0.75
    nothing = win_rate(synthetic(["skip"]))
    assert nothing["win_rate"] is None and nothing["votes"] == 0


def test_votes_on_one_pair_are_resampled_together():
    rng = np.random.default_rng(3)
    winners = draw(200, 0.6, 0.0, rng)
    one_each = win_rate(synthetic(winners))
    # three raters who always agree add no information: the interval must not shrink
    tripled = win_rate(synthetic([w for w in winners for _ in range(3)],
                                 raters=["x", "y", "z"] * 200,
                                 pairs=[n for n in range(200) for _ in range(3)]))
    assert tripled["win_rate"] == one_each["win_rate"] and tripled["pairs"] == 200
    width = lambda r: r["ci_high"] - r["ci_low"]  # noqa: E731
    assert width(tripled) == pytest.approx(width(one_each), rel=0.15)  # not 1 / sqrt(3)
    assert tripled["votes"] == 600 and tripled["raters"] == 3
    with pytest.raises(ConfigError, match="one cluster per value"):
        cluster_bootstrap([1.0, 0.0], ["p"])


def test_rater_agreement_on_a_constructed_case():
    votes = synthetic(["a", "a", "b", "tie", "tie", "a", "skip", "b"],
                      raters=["r1", "r2", "r3", "r1", "r2", "r1", "r2", "r1"],
                      pairs=[0, 0, 0, 1, 1, 2, 2, 3])
    # pair 0: r1-r2 agree, r1-r3 and r2-r3 do not; pair 1: the two ties agree; pairs 2 and 3
    # have one counted answer each (a skip is no answer)
    assert rater_agreement(votes) == {"agreement": 2 / 4, "pairs": 2, "rater_pairs": 4}
    assert rater_agreement(synthetic(["a", "b"]))["agreement"] is None


def test_rm_agreement_on_a_constructed_case():
    votes = synthetic(["a", "b", "a", "tie", "b"])
    score_a = [0.9, 0.9, 0.5, 0.0, 0.1]
    score_b = [0.1, 0.2, 0.5, 1.0, 0.3]
    # agrees, disagrees, RM tie (half), rater tie (left out), agrees
    result = rm_agreement(votes, score_a, score_b)
    assert result["agreement"] == pytest.approx(2.5 / 4) and result["votes"] == 4
    with pytest.raises(ConfigError, match="two scores per vote"):
        rm_agreement(votes, score_a, score_b[:2])


def test_categories_and_criteria_are_reported_apart():
    rng = np.random.default_rng(4)
    votes = (synthetic(draw(300, 0.8, 0.0, rng), categories=["animals"] * 300)
             + synthetic(draw(300, 0.3, 0.0, rng), categories=["people"] * 300,
                         pairs=range(300, 600))
             + synthetic(draw(100, 0.5, 0.5, rng), criterion="quality"))
    summary, = summarise(votes)
    overall = summary["criteria"]["overall"]
    for category, truth in (("animals", 0.8), ("people", 0.3)):
        rate = overall["by_category"][category]
        assert abs(rate["win_rate"] - truth) < 0.08 and rate["votes"] == 300  # 3 sd or more
    assert overall["by_category"]["people"]["ci_high"] < overall["by_category"]["animals"]["ci_low"]
    assert summary["criteria"]["quality"]["win_rate"]["votes"] == 100
    assert summary["model_a"] == "student (2 steps)" and summary["answers"] == 600


# ---------------------------------------------------------------- the report


class Brightness(RewardModel):
    """Mean brightness: the fake study's b images are one grey level brighter than a's."""

    name = "test-brightness"

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return images.mean((1, 2, 3))


class TestRewards:
    @hookimpl
    def register_reward_models(self, register):
        register(Brightness)


@pytest.fixture
def brightness():
    reset_host(load_host(extra_plugins=[("vote-test-rewards", TestRewards())]))
    yield
    reset_host()


def test_the_command_writes_a_markdown_report(tmp_path, capsys, brightness):
    study = fake_study(tmp_path / "images")
    log = VoteLog(tmp_path / "votes.jsonl")
    session = VotingSession(study, log, criteria=["overall", "quality"])
    answers = {"ada": ["a", "b", "b", "tie", "skip"], "bob": ["b", "b", "a", "b", "b"]}
    for rater, wanted in answers.items():
        for _ in wanted:
            shown = session.next_pair(rater)
            winner = wanted[shown.pair.index]
            choice = winner if winner in ("tie", "skip") else (
                "left" if winner == shown.left else "right")
            session.record(shown, None if winner == "skip" else {"overall": choice,
                                                                 "quality": "tie"})
    with log.path.open("a") as handle:  # a line broken by hand
        handle.write('{"study": "broken\n')
    code = cli.run(["vote", "report", str(log.path), "--metrics", "test-brightness"])
    out, err = capsys.readouterr()
    assert code == 0
    text = (tmp_path / "votes-report.md").read_text()
    assert text == out.rstrip("\n") + "\n"
    assert "a tie counts as half a win for each side" in text
    assert "A: student (2 steps) vs B: teacher (50 steps)" in text
    assert ("9 answers and 1 skip from 2 raters on 5 different pairs; criteria: "
            "overall, quality.") in " ".join(text.split())
    assert "| ada | 4 | 1 |" in text and "| bob | 5 | 0 |" in text
    # overall: a, b, b, tie + b, b, a, b, b -> 2 + 0.5 of 9
    rate = win_rate(synthetic(["a", "b", "b", "tie", "b", "b", "a", "b", "b"],
                              pairs=[0, 1, 2, 3, 0, 1, 2, 3, 4]))
    assert (f"| overall | {rate['win_rate']:.3f} | {rate['ci_low']:.3f} – {rate['ci_high']:.3f} "
            "| 2 | 6 | 1 | 9 | 5 | 2 |") in text
    assert "| quality | 0.500 |" in text
    assert "**overall, by prompt category**" in text and "| shapes |" in text
    # pairs 0-3 answered by both: a/b, b/b, b/a, tie/b -> the same answer on 1 of 4
    assert ("Agreement between raters (overall): 0.250 (the same answer in 1 of 4 pairs of "
            "raters, on the 4 pairs answered by more than one rater)") in " ".join(text.split())
    # brightness always prefers b: it agrees with the 6 votes for b, not the 2 for a
    assert "| overall | test-brightness | 0.750 |" in text
    assert "skipped 1 line(s)" in text and "line 21 (not JSON)" in " ".join(err.split())
    assert cli.run(["vote", "report", str(log.path), "--json", "-o",
                    str(tmp_path / "r.md")]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["studies"][0]["criteria"]["overall"]["win_rate"]["win_rate"] == rate["win_rate"]


def test_bad_votes_files_are_named_in_one_sentence(tmp_path, capsys):
    missing = tmp_path / "missing.jsonl"
    assert cli.run(["vote", "report", str(missing)]) == 1
    assert f"votes file {missing} does not exist" in " ".join(capsys.readouterr().err.split())
    junk = tmp_path / "junk.jsonl"
    junk.write_text("hello\n[1, 2]\n")
    with pytest.raises(ConfigError, match=r"holds no votes \(2 line\(s\) that are not votes\)"):
        report(junk)
    votes = tmp_path / "votes.jsonl"
    VoteLog(votes).append(synthetic(["a", "b"]))
    with pytest.raises(ConfigError, match="'nope' is not a registered reward model"):
        report(votes, ["nope"])
    with pytest.raises(ConfigError, match=r"study image .*a\.png cannot be read"):
        report(votes, ["world-judge"])
