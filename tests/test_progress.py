"""Training progress: a rich bar on a terminal, plain progress lines in logs and cluster jobs."""

from __future__ import annotations

import io

from rich.console import Console

from rewardkit.progress import ProgressBar


def lines_of(console: Console) -> list[str]:
    return [line for line in console.file.getvalue().splitlines() if line.strip()]


def test_a_log_file_gets_plain_lines_first_periodically_and_last(monkeypatch):
    clock = iter([0.0, 0.0, 1.0, 2.0, 40.0, 41.0])  # set-up, then one reading per step
    monkeypatch.setattr("time.monotonic", lambda: next(clock))
    console = Console(file=io.StringIO(), force_terminal=False, width=200)
    with ProgressBar(5, console=console, keys=("lcd_loss", "step_time"),
                     line_every_seconds=30) as bar:
        for step in range(1, 6):
            bar.update(step, {"lcd_loss": 0.25, "step_time": 0.5})
    lines = lines_of(console)
    # step 1 (first), step 4 at t=40 (30 s after the last line), step 5 (last)
    assert [line.split()[1] for line in lines] == ["1/5", "4/5", "5/5"]
    assert lines[1].startswith("step 4/5 (80%) lcd_loss 0.25  s/step 0.5 | 0.10 steps/s | ")
    assert "steps/s | elapsed 0:00:40 | ETA 0:00:" in lines[1]
    assert "\x1b[" not in console.file.getvalue()  # no control codes in a log


def test_a_time_budget_caps_the_eta(monkeypatch):
    clock = iter([0.0, 10.0, 20.0])  # set-up, then one reading per step: 0.1 steps/s
    monkeypatch.setattr("time.monotonic", lambda: next(clock))
    console = Console(file=io.StringIO(), force_terminal=False, width=200)
    with ProgressBar(100, console=console, line_every_seconds=0) as bar:
        bar.update(1, {})  # 99 steps at 0.1 steps/s: 990 s
        bar.update(2, {}, seconds_left=125.0)  # the budget ends the run first
    first, second = lines_of(console)
    assert first.endswith("ETA 0:16:30") and second.endswith("ETA 0:02:05")


def test_a_terminal_gets_the_bar_and_no_plain_lines():
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    with ProgressBar(3, console=console) as bar:
        for step in range(1, 4):
            bar.update(step, {"lcd_loss": 0.1})
    assert not bar.lines and "step 1/3" not in console.file.getvalue()


def test_a_resumed_run_counts_its_rate_from_the_resumed_step(monkeypatch):
    clock = iter([0.0, 10.0])
    monkeypatch.setattr("time.monotonic", lambda: next(clock))
    console = Console(file=io.StringIO(), force_terminal=False, width=200)
    with ProgressBar(100, start=50, console=console) as bar:
        bar.update(51, {})
    assert "step 51/100 (51%)" in lines_of(console)[0]


def test_disabled_prints_nothing():
    console = Console(file=io.StringIO(), force_terminal=False)
    with ProgressBar(3, enabled=False, console=console) as bar:
        bar.update(1, {"lcd_loss": 0.1})
    assert console.file.getvalue() == ""


_PROBE = """
import sys
from rewardkit.cli import run
run(["list", "solver"])
from tqdm.auto import tqdm
print("bars disabled" if tqdm(range(1)).disable else "bars shown")
"""


def _probe(env: dict) -> str:
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120,
                          env={**{k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}, **env})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_library_progress_bars_are_off_in_a_log_file_unless_the_user_says_otherwise():
    # stderr is a pipe here, as in `rewardkit run ... 2> log`: diffusers/transformers bars go
    assert _probe({}) == "bars disabled"
    # the user's own setting wins (tqdm reads any non-empty value as true, so "" is how to keep them)
    assert _probe({"TQDM_DISABLE": ""}) == "bars shown"
