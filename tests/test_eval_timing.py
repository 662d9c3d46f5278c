"""Sampling speed timed so that load on the machine cannot invent a speed-up: every row timed in
turn, rounds reversed every other time, speed-ups as the median of per-round ratios (the world
evaluation's use of it: tests/test_world_eval.py)."""

from __future__ import annotations

import statistics
from types import SimpleNamespace

import pytest

from rewardkit.errors import ConfigError
from rewardkit.evaluation.runner import ModelSpec
from rewardkit.evaluation.timing import round_ratios, summarise, time_interleaved

TEACHER = ModelSpec("teacher", "teacher-dir", "teacher", [50])
STUDENT = ModelSpec("student", "student-dir", "student", [1, 2])
ROWS = [("teacher", 50), ("student", 1), ("student", 2)]
#: The true cost of one image per row (ms), at no load.
COST = {("teacher", 50): 100.0, ("student", 1): 2.0, ("student", 2): 4.0}


class FakeMachine:
    """Pipelines on a simulated clock: a call's work (``COST`` ms per image) runs ``load(t)``
    times slower while the clock is at ``t`` (integrated in 1 ms ticks); calls are recorded."""

    def __init__(self, monkeypatch, load=lambda ms: 1.0):
        self.load, self.clock, self.calls = load, 0.0, []
        monkeypatch.setattr("rewardkit.sampling.load_pipeline",
                            lambda location, *_: location.split("-")[0])
        monkeypatch.setattr("rewardkit.sampling.run_pipeline", self.run_pipeline)

    def run_pipeline(self, pipe, prompts, steps, guidance_scale, seed=0, batch_size=8, seeds=None):
        self.calls.append((pipe, steps, len(prompts)))
        work, began = COST[(pipe, steps)] * len(prompts), self.clock
        while work > 1e-9:
            tick = min(1.0, work)
            self.clock += tick * self.load(self.clock)
            work -= tick
        return SimpleNamespace(seconds=(self.clock - began) / 1000.0)


def test_rows_are_timed_in_turn_and_every_other_round_in_reverse(monkeypatch):
    machine = FakeMachine(monkeypatch)
    times = time_interleaved([TEACHER, STUDENT], [f"p{i}" for i in range(10)], rounds=3,
                             batch_size=4, match_duration=False)
    warm_up, single, timed = machine.calls[:3], machine.calls[3:6], machine.calls[6:]
    assert warm_up == [(*row, 1) for row in ROWS]  # one untimed one-image call per row
    assert single == [(*row, 4) for row in ROWS]  # and one untimed batch
    assert timed == [(*row, 4) for row in ROWS + ROWS[::-1] + ROWS]
    assert times == {row: [pytest.approx(COST[row])] * 3 for row in ROWS}


def test_each_row_repeats_its_batch_to_last_as_long_as_the_slowest(monkeypatch):
    machine = FakeMachine(monkeypatch)
    time_interleaved([TEACHER, STUDENT], ["a", "b"], rounds=1, batch_size=2)
    timed = machine.calls[6:]
    # the teacher's batch costs 50x a 1-step student's and 25x a 2-step one's
    assert [timed.count((*row, 2)) for row in ROWS] == [1, 50, 25]
    machine.calls.clear()
    time_interleaved([TEACHER, STUDENT], ["a", "b"], rounds=1, batch_size=2, max_repeats=10)
    assert [machine.calls[6:].count((*row, 2)) for row in ROWS] == [1, 10, 10]


def test_a_load_spike_on_the_teacher_cannot_invent_a_speedup(monkeypatch):
    # another job slows everything down 20x for a while: a round is 3 x 200 ms of work
    # (durations matched), and the slow stretch covers the teacher's batches of rounds 1 and 2
    # (the end of round 1, the start of round 2: the order is reversed every other round)
    def spike(ms: float) -> float:
        return 20.0 if 1500 <= ms < 5000 else 1.0

    FakeMachine(monkeypatch, spike)
    times = time_interleaved([TEACHER, STUDENT], ["a", "b"], rounds=5, batch_size=2)
    teacher = times[("teacher", 50)]
    assert max(teacher) > 5 * sorted(teacher)[2]  # the spike is there, in one round
    for steps in (1, 2):
        summary = summarise(round_ratios(teacher, times[("student", steps)]))
        true = COST[("teacher", 50)] / COST[("student", steps)]
        assert summary["median"] == pytest.approx(true)  # the spike shows only in the spread
        assert summary["max"] > 5 * true and summary["rounds"] == 5


def test_steady_or_fluctuating_load_leaves_the_speedup_where_it_is(monkeypatch):
    true = COST[("teacher", 50)] / COST[("student", 1)]

    def speedups(load, match_duration=True) -> list[float]:
        FakeMachine(monkeypatch, load)
        times = time_interleaved([TEACHER, STUDENT], ["a", "b", "c", "d"], rounds=5, batch_size=4,
                                 match_duration=match_duration)
        return round_ratios(times[("teacher", 50)], times[("student", 1)])

    assert speedups(lambda ms: 3.0) == [pytest.approx(true)] * 5  # a busy process throughout
    # load switching between 1x and 4x every 50 ms: a student batch (8 ms of work) lands in
    # one phase or the other, the teacher's (400 ms) averages over both; timed once, the
    # student's figure would swing with the phase, matched in duration it averages like the
    # teacher's
    def flicker(ms: float) -> float:
        return 1.0 if int(ms // 50) % 2 == 0 else 4.0

    once = speedups(flicker, match_duration=False)
    matched = speedups(flicker)
    assert max(once) / min(once) > 2
    assert max(matched) / min(matched) < 1.3
    assert statistics.median(matched) == pytest.approx(true, rel=0.15)


def test_summaries_and_ratios_check_their_input(monkeypatch):
    assert summarise([3.0, 1.0, 2.0, 10.0]) == {"median": 2.5, "min": 1.0, "max": 10.0, "rounds": 4}
    assert round_ratios([10.0, 20.0], [2.0, 5.0]) == [5.0, 4.0]
    with pytest.raises(ValueError, match="2 reference rounds but 1"):
        round_ratios([1.0, 2.0], [1.0])
    FakeMachine(monkeypatch)
    with pytest.raises(ConfigError, match="at least 1"):
        time_interleaved([TEACHER], ["a"], rounds=0)


def test_the_rounds_run_on_the_threads_asked_for_and_restore_the_process_s(monkeypatch):
    import torch

    machine = FakeMachine(monkeypatch)
    seen = []
    sample = machine.run_pipeline
    machine.run_pipeline = lambda *a, **k: (seen.append(torch.get_num_threads()), sample(*a, **k))[1]
    monkeypatch.setattr("rewardkit.sampling.run_pipeline", machine.run_pipeline)
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    time_interleaved([TEACHER, STUDENT], ["a", "b"], rounds=1, batch_size=2, threads=wanted)
    assert seen and set(seen) == {wanted}
    assert torch.get_num_threads() == before
    seen.clear()
    time_interleaved([TEACHER, STUDENT], ["a", "b"], rounds=1, batch_size=2)  # 0: the process's
    assert set(seen) == {before}
    with pytest.raises(ConfigError, match="timing threads must be 0"):
        time_interleaved([TEACHER, STUDENT], ["a", "b"], rounds=1, threads=-1)
