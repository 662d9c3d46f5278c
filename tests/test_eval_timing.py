"""Sampling speed timed so that load on the machine cannot invent a speed-up: every row timed in
turn, rounds reversed every other time, speed-ups as the median of per-round ratios (the world
evaluation's use of it: tests/test_world_eval.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from rewardkit.errors import ConfigError
from rewardkit.evaluation.runner import ModelSpec
from rewardkit.evaluation.timing import round_ratios, summarise, time_interleaved

TEACHER = ModelSpec("teacher", "teacher-dir", "teacher", [50])
STUDENT = ModelSpec("student", "student-dir", "student", [1, 2])
#: The true cost of one image per row (ms), at no load.
COST = {("teacher", 50): 100.0, ("student", 1): 2.0, ("student", 2): 4.0}


def fake_sampling(monkeypatch, load=lambda call: 1.0):
    """Pipelines that record their calls and take ``COST * load(timed call index)`` ms/image."""
    calls = []

    def load_pipeline(location, scheduler, device, dtype):
        return {"teacher-dir": "teacher", "student-dir": "student"}[location]

    def run_pipeline(pipe, prompts, steps, guidance_scale, seed=0, batch_size=8, seeds=None, **_):
        calls.append((pipe, steps, len(prompts)))
        timed = sum(1 for c in calls if c[2] > 1) - 1
        factor = load(timed) if len(prompts) > 1 else 1.0
        return SimpleNamespace(ms_per_image=COST[(pipe, steps)] * factor)

    monkeypatch.setattr("rewardkit.sampling.load_pipeline", load_pipeline)
    monkeypatch.setattr("rewardkit.sampling.run_pipeline", run_pipeline)
    return calls


def test_rows_are_timed_in_turn_and_every_other_round_in_reverse(monkeypatch):
    calls = fake_sampling(monkeypatch)
    times = time_interleaved([TEACHER, STUDENT], [f"p{i}" for i in range(10)], rounds=3,
                             batch_size=4)
    rows = [("teacher", 50), ("student", 1), ("student", 2)]
    assert calls[:3] == [(*row, 1) for row in rows]  # one untimed warm-up call per row
    assert calls[3:] == [(*row, 4) for row in rows + rows[::-1] + rows]
    assert times == {row: [COST[row]] * 3 for row in rows}


def test_a_load_spike_on_the_teacher_cannot_invent_a_speedup(monkeypatch):
    # the teacher's timed call of round 1 (the 6th timed call: rows reversed) runs 20x slower,
    # as on a machine where another job starts for a while
    fake_sampling(monkeypatch, load=lambda call: 20.0 if call == 5 else 1.0)
    times = time_interleaved([TEACHER, STUDENT], ["a", "b"], rounds=5, batch_size=2)
    teacher = times[("teacher", 50)]
    assert teacher == [100.0, 2000.0, 100.0, 100.0, 100.0]
    for steps in (1, 2):
        summary = summarise(round_ratios(teacher, times[("student", steps)]))
        true = COST[("teacher", 50)] / COST[("student", steps)]
        assert summary["median"] == pytest.approx(true)  # the spike shows only in the spread
        assert summary["max"] == pytest.approx(20 * true) and summary["rounds"] == 5
    # timing the teacher once and the students afterwards would have reported 20x the speed-up
    assert 2000.0 / COST[("student", 1)] == pytest.approx(20 * 50.0)


def test_summaries_and_ratios_check_their_input(monkeypatch):
    assert summarise([3.0, 1.0, 2.0, 10.0]) == {"median": 2.5, "min": 1.0, "max": 10.0, "rounds": 4}
    assert round_ratios([10.0, 20.0], [2.0, 5.0]) == [5.0, 4.0]
    with pytest.raises(ValueError, match="2 reference rounds but 1"):
        round_ratios([1.0, 2.0], [1.0])
    fake_sampling(monkeypatch)
    with pytest.raises(ConfigError, match="at least 1"):
        time_interleaved([TEACHER], ["a"], rounds=0)
