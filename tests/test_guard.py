"""The reward-hacking guard (rewardkit.training.guard and the loop's use of it): its rule, its
measures, and a run where the trained reward rises while the gold panel falls, which the guard
stops (stop_on_hacking) after keeping the best model by the panel (keep_best), saying so."""

from __future__ import annotations

import json
import sys

import pytest
import torch

import rewardkit as rk
from rewardkit import hookimpl
from rewardkit.errors import ConfigError
from rewardkit.plugins import load_host, reset_host
from rewardkit.recipes.lcd import LCDRecipe
from rewardkit.rewards.base import RewardModel
from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline
from rewardkit.testing.tiny_training import tiny_lcd_config, write_tiny_image_folder
from rewardkit.training.guard import HackingGuard, diversity
from rewardkit.training.metrics import read_metrics


class Redness(RewardModel):
    """Trained on: red minus the other channels (differentiable)."""

    name = "test-redness"
    differentiable = True

    def score(self, images, prompts):
        channels = images.mean((2, 3))
        return channels[:, 0] - 0.5 * (channels[:, 1] + channels[:, 2])


class Blueness(RewardModel):
    """The gold panel: blue minus red. It falls as the student learns redness."""

    name = "test-blueness"
    differentiable = True

    def score(self, images, prompts):
        channels = images.mean((2, 3))
        return channels[:, 2] - channels[:, 0]


class MeanGap:
    """A distribution metric without weights: the gap between the two sets' mean pixels."""

    name = "test-mean-gap"

    def compute(self, generated, reference):
        return {"mean_gap": float((generated.mean() - reference.mean()).abs())}


@hookimpl
def register_reward_models(register):
    register(Redness)
    register(Blueness)


@hookimpl
def register_metrics(register):
    register(MeanGap)


@pytest.fixture
def host(fresh_host):
    reset_host(load_host(extra_plugins=[("guard-test", sys.modules[__name__])]))
    yield
    reset_host()


def rows(*pairs):
    return [{"step": i, "guard_reward": r, "gold_panel": g} for i, (r, g) in enumerate(pairs)]


def test_the_rule_needs_patience_validations_of_reward_up_and_panel_down():
    guard = HackingGuard(["p"], [0], {}, patience=2)
    guard.history = rows((0.1, 1.0), (0.2, 0.9))
    assert guard.verdict() is None  # one validation of it only
    guard.history = rows((0.1, 1.0), (0.2, 0.9), (0.3, 0.8))
    sentence = guard.verdict()
    assert sentence.startswith("reward hacking at step 2: over the last 2 validations the "
                               "trained reward rose (0.1 -> 0.3) while the gold panel fell "
                               "(1 -> 0.8)")
    guard.history = rows((0.1, 1.0), (0.2, 0.9), (0.3, 0.95))  # the panel recovered
    assert guard.verdict() is None
    guard.history = rows((0.3, 1.0), (0.2, 0.9), (0.1, 0.8))  # both fall: not hacking
    assert guard.verdict() is None
    assert guard.best()["step"] == 0


def test_diversity_is_zero_for_identical_samples_and_grows_with_their_spread():
    same = torch.full((4, 3, 2, 2), 0.5)
    assert diversity(same, groups=2) == 0.0
    spread = torch.stack([torch.zeros(3, 2, 2), torch.ones(3, 2, 2)] * 2)
    assert diversity(spread, groups=2) == pytest.approx(1.0)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("guard")
    teacher = build_tiny_sd_pipeline(root / "teacher")
    data = write_tiny_image_folder(root / "data", count=4, size=16)
    LCDRecipe(tiny_lcd_config(teacher, data, root / "lcd", max_train_steps=1)).run(progress=False)
    prompts = root / "prompts.txt"
    prompts.write_text("a red circle\na blue square\na green triangle\na photo of a dog\n")
    return {"teacher": str(teacher), "student": str(root / "lcd" / "pipeline"),
            "prompts": str(prompts), "data": str(data)}


def draft_values(assets, out, **extra):
    return {**dict(pretrained_teacher_model=assets["teacher"], pretrained_student=assets["student"],
                train_shards_path_or_url=assets["prompts"], resolution=16, train_batch_size=2,
                learning_rate=1e-3, seed=0, report_to="none", checkpointing_steps=0,
                output_dir=str(out), reward="test-redness", gold_panel=["test-blueness"],
                guard_prompts=["a red circle", "a dog"], guard_seeds=[0, 1]), **extra}


def test_a_hacking_run_is_stopped_with_its_sentence_and_the_best_kept(host, assets, tmp_path):
    recipe = rk.recipe("draft", draft_values(assets, tmp_path, max_train_steps=40,
                                             validation_steps=2, hacking_patience=2,
                                             stop_on_hacking=True, keep_best=True,
                                             validation_prompts=[]))
    recipe.run(progress=False)
    metrics = read_metrics(tmp_path / "metrics.jsonl")
    checked = [r for r in metrics if "gold_panel" in r]
    assert checked[0]["step"] == 0 and {"guard_reward", "gold_test-blueness",
                                        "guard_diversity"} <= set(checked[0])
    stopped = [r for r in metrics if "guard_verdict" in r]
    assert len(stopped) == 1, "the run stops at its first verdict"
    assert stopped[0]["step"] == metrics[-1]["step"] < 40
    assert stopped[0]["guard_verdict"].startswith(f"reward hacking at step {stopped[0]['step']}")
    assert checked[-1]["guard_reward"] > checked[0]["guard_reward"]  # the trained RM rose
    assert checked[-1]["gold_panel"] < checked[0]["gold_panel"]  # the panel fell
    best = json.loads((tmp_path / "best" / "guard.json").read_text())
    assert best["gold_panel"] == max(r["gold_panel"] for r in checked)
    assert (tmp_path / "best" / "model_index.json").is_file()
    assert (tmp_path / "pipeline" / "model_index.json").is_file()  # the run's output is saved


def test_the_guard_measures_fd_to_the_teacher_and_survives_a_resume(host, assets, tmp_path):
    values = draft_values(assets, tmp_path, validation_steps=1, checkpointing_steps=1,
                          guard_fd_metric="test-mean-gap", guard_teacher_steps=2,
                          validation_prompts=[])
    rk.recipe("draft", {**values, "max_train_steps": 2}).run(progress=False)
    rows = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "guard_fd" in r]
    assert [r["step"] for r in rows] == [0, 1, 2] and all(r["guard_fd"] >= 0 for r in rows)
    assert (tmp_path / "guard_reference.safetensors").is_file()  # the teacher's, made once
    resumed = rk.recipe("draft", {**values, "max_train_steps": 3,
                                  "resume_from_checkpoint": "latest"})
    resumed.setup()
    assert [r["step"] for r in resumed.guard.history] == [0, 1, 2]
    assert resumed.guard.reference.shape == (4, 3, 16, 16)


def test_guard_settings_are_checked_before_anything_loads(host, assets, tmp_path):
    with pytest.raises(ConfigError, match="gold_panel: .*'no-such-rm'"):
        rk.recipe("draft", draft_values(assets, tmp_path, gold_panel=["no-such-rm"]))
    with pytest.raises(ConfigError, match="stop_on_hacking and keep_best judge by the gold panel"):
        rk.recipe("draft", draft_values(assets, tmp_path, gold_panel=[], stop_on_hacking=True))
    with pytest.raises(ConfigError, match="set validation_steps > 0"):
        rk.recipe("draft", draft_values(assets, tmp_path, validation_steps=0))


def test_the_world_drops_its_own_guard_when_the_user_turns_validations_off():
    """The world's default guard measures at validations; with ``validation_steps=0`` it is off
    rather than a refusal of the user's config, and a user's own panel still wins."""
    from rewardkit.world.preset import WorldPreset

    preset = WorldPreset()
    on = preset.defaults("rg-lcd", {})
    assert on["gold_panel"] and on["guard_fd_metric"]
    off = preset.defaults("rg-lcd", {"validation_steps": 0})
    assert off["gold_panel"] == [] and off["guard_fd_metric"] is None
    config = rk.recipe("rg-lcd", output_dir="unused", validation_steps=0, max_train_steps=1).config
    assert config.gold_panel == [] and config.guard_fd_metric is None
