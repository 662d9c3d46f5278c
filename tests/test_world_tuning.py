"""``rewardkit run draft`` / ``grpo`` with no arguments: the world preset distils a student
first (once), then fine-tunes it against world-judge with the guard on (a shortened run of
each here; the full runs are the commands in docs/draft.md and docs/grpo.md)."""

from __future__ import annotations

import pytest

import rewardkit as rk
from rewardkit.training.metrics import read_metrics
from rewardkit.world.tuning_run import TRAIN_PROMPTS, world_student


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    return world_student(tmp_path_factory.mktemp("world") / "lcd-world", steps=2)


def test_the_student_is_distilled_once_and_reused(student):
    assert (student / "model_index.json").is_file()
    stamp = (student / "model_index.json").stat().st_mtime_ns
    assert world_student(student.parent, steps=2) == student
    assert (student / "model_index.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("recipe, keys", [
    ("draft", {"reward", "proxy_loss", "expert_reward"}),
    ("grpo", {"reward", "policy_loss", "clip_fraction"})])
def test_a_world_run_with_no_teacher_given(student, tmp_path, recipe, keys):
    run = rk.recipe(recipe, pretrained_student=str(student), output_dir=str(tmp_path),
                    max_train_steps=2, validation_steps=2, train_batch_size=2,
                    guard_seeds=[0, 1], checkpointing_steps=0)
    config = run.config
    assert config.train_shards_path_or_url == TRAIN_PROMPTS and config.reward == "world-judge"
    assert config.gold_panel == ["world-scorer"] and config.guard_fd_metric == "world-fd"
    run.run(progress=False)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert keys <= set(rows[-1])
    guarded = [r for r in rows if "gold_panel" in r]
    assert [r["step"] for r in guarded] == [0, 2]
    assert all(r["guard_fd"] >= 0 and "guard_reward" in r for r in guarded)
    assert (tmp_path / "pipeline" / "model_index.json").is_file()
