"""Sampling speed measured so that load on the machine cannot invent a speed-up.

Timing every image of the teacher, then every image of each student (what the sampling pass
does) lets a load spike that hits only the teacher's minutes multiply the speed-up. Here every
(model, step count) row is timed on the same batch in turn, all pipelines loaded side by side,
for several rounds (the order reversed every other round, so a slow drift hits both ends
alike): a row's figure is the median over the rounds, its spread the lowest and highest round,
and a speed-up is the median of the per-round ratios, each taken between two rows timed
moments apart.

A student's batch takes a fraction of the teacher's (1 step against 50 with guidance), so timed
once it would sample the machine's load at one instant while the teacher's figure averages it
over seconds. So each row repeats its batch as often as it takes to last about as long as the
slowest row's batch (the repeat counts are fixed up front, from one untimed batch of each row),
and every row's figure averages the load over the same stretch of time::

    times = time_interleaved([teacher_spec, student_spec], prompts, rounds=5)
    speedups = round_ratios(times[("teacher", 50)], times[("student", 2)])
    print(summarise(speedups))   # {"median": ..., "min": ..., "max": ..., "rounds": 5}

On a CPU, ``threads`` sets torch's thread count for the rounds. With one thread, a process
competing for the cores time-slices the sampler evenly; with one thread per core, every
parallel region waits for the thread that shares its core with the other process, and those
waits scale with the number of operations rather than with the arithmetic, so they slow the
teacher's 50 small steps more than a student's few and inflate the speed-up (on the world's
2-core machine with one busy process: 45% at 1 step with 2 threads, under 15% with one).
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import ConfigError

if TYPE_CHECKING:
    from .runner import ModelSpec

#: Rounds of the interleaved timing where a caller asks for it without saying how many.
DEFAULT_TIMING_ROUNDS = 5
#: The most times a row repeats its batch in one round to last as long as the slowest row's.
MAX_REPEATS = 200


def time_interleaved(models: Sequence["ModelSpec"], prompts: Sequence[str], *,
                     rounds: int = DEFAULT_TIMING_ROUNDS, seed: int = 0, batch_size: int = 8,
                     device: str = "auto", dtype: str = "float32",
                     match_duration: bool = True,
                     max_repeats: int = MAX_REPEATS,
                     threads: int = 0) -> dict[tuple[str, int], list[float]]:
    """ms/image of every ``(model.label, steps)`` row in each round: ``{row: [ms, ...]}``.

    Each round samples the first ``batch_size`` prompts (image ``i`` with seed ``seed + i``)
    with every row, rows in order on even rounds and in reverse on odd ones. Before the rounds,
    each row makes one untimed one-image call (allocation, kernel selection) and one untimed
    batch; with ``match_duration`` a row then repeats its batch in every round as many times
    (at most ``max_repeats``) as its untimed batch fits into the slowest row's. Model loading
    is not timed. ``threads`` > 0 sets torch's CPU thread count for the rounds (restored
    after); 0 keeps the process's.
    """
    import torch

    if rounds < 1:
        raise ConfigError(f"timing rounds must be at least 1, got {rounds}")
    if threads < 0:
        raise ConfigError(f"timing threads must be 0 (the process's) or more, got {threads}")
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _time_rounds(models, prompts, rounds, seed, batch_size, device, dtype,
                            match_duration, max_repeats)
    finally:
        torch.set_num_threads(previous)


def _time_rounds(models: Sequence["ModelSpec"], prompts: Sequence[str], rounds: int, seed: int,
                 batch_size: int, device: str, dtype: str, match_duration: bool,
                 max_repeats: int) -> dict[tuple[str, int], list[float]]:
    from ..sampling import load_pipeline, run_pipeline

    if not prompts:
        raise ConfigError("no prompts to time sampling on")
    batch = list(prompts[:batch_size])
    seeds = [seed + i for i in range(len(batch))]
    pipes = {model.label: load_pipeline(model.location,
                                        "lcm" if model.kind == "student" else "ddim", device, dtype)
             for model in models}
    rows = [(model, int(steps)) for model in models for steps in model.steps]
    for model, steps in rows:  # untimed warm-up
        run_pipeline(pipes[model.label], batch[:1], steps, model.guidance_scale, seeds=seeds[:1])

    def sample(model: "ModelSpec", steps: int) -> float:
        return run_pipeline(pipes[model.label], batch, steps, model.guidance_scale,
                            batch_size=len(batch), seeds=seeds).seconds

    single = {(m.label, s): sample(m, s) for m, s in rows}  # untimed: sets the repeat counts
    longest = max(single.values())
    repeats = {key: (min(max_repeats, max(1, round(longest / seconds))) if match_duration
                     and seconds > 0 else 1) for key, seconds in single.items()}
    times: dict[tuple[str, int], list[float]] = {key: [] for key in single}
    for index in range(rounds):
        for model, steps in (rows if index % 2 == 0 else rows[::-1]):
            key = (model.label, steps)
            seconds = sum(sample(model, steps) for _ in range(repeats[key]))
            times[key].append(1000.0 * seconds / (repeats[key] * len(batch)))
    return times


def round_ratios(reference: Sequence[float], row: Sequence[float]) -> list[float]:
    """Per-round ``reference / row`` (a speed-up when ``reference`` is the teacher's ms/image)."""
    if len(reference) != len(row):
        raise ValueError(f"{len(reference)} reference rounds but {len(row)} row rounds")
    return [r / x if x > 0 else float("nan") for r, x in zip(reference, row)]


def summarise(values: Sequence[float]) -> dict[str, Any]:
    """``{"median", "min", "max", "rounds"}`` of one row's per-round values."""
    if not values:
        raise ValueError("no rounds to summarise")
    return {"median": float(statistics.median(values)), "min": float(min(values)),
            "max": float(max(values)), "rounds": len(values)}
