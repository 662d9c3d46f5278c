"""The progress of long work (training steps, evaluated images, rated pairs): a rich bar on a
terminal, plain progress lines in a log file or a cluster job."""

from __future__ import annotations

import math
from typing import Any, Sequence

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class ProgressBar:
    """Progress over steps (or images): a rich bar on a terminal, plain lines elsewhere.

    In a log file or a cluster job (stdout is not a terminal) a live bar prints nothing useful,
    so a line ``step 120/600 (20%) lcd_loss 0.0123 lr 0.0001 s/step 0.54 | 1.85 steps/s |
    elapsed 0:01:05 | ETA 0:04:20`` is printed at the first step, every ``line_every_seconds``
    (30) and at the last step, as accelerate-based trainers log. ``keys``: the metrics shown
    (``step_time`` is shown as ``s/step``). ``label``/``unit``: the bar's title and what it counts
    (``rewardkit eval`` counts images). Disabled: a no-op.

    The ETA is the remaining count at the rate since ``start``, capped by ``seconds_left`` when
    :meth:`update` is given one (a run bounded by ``max_train_minutes`` ends when that is spent,
    not when the steps are done); the bar and the lines show the same ETA.
    """

    def __init__(self, total: int, start: int = 0, enabled: bool = True,
                 keys: Sequence[str] = ("lcd_loss", "lr", "step_time"),
                 line_every_seconds: float = 30.0, console: Any = None, label: str = "train",
                 unit: str = "step") -> None:
        import time

        self.enabled, self.unit = enabled, unit
        self.keys = tuple(keys)
        self.total, self.start = total, start
        self.progress = Progress(
            TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
            TextColumn("ETA {task.fields[eta]}"),
            disable=not enabled, transient=False, console=console)
        self.lines = enabled and not self.progress.console.is_terminal
        if self.lines:
            self.progress.disable = True
        self.line_every = line_every_seconds
        self.began = self.last_line = time.monotonic()
        self.task = self.progress.add_task(label, total=total, completed=start, info="", eta="?")

    def __enter__(self) -> "ProgressBar":
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def rate_and_eta(self, step: int, now: float, seconds_left: float | None = None
                     ) -> tuple[float, float]:
        """Items per second since ``start``, and the seconds left (NaN while unknown)."""
        elapsed = now - self.began
        rate = (step - self.start) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        if seconds_left is not None:
            eta = max(seconds_left, 0.0) if math.isnan(eta) else min(eta, max(seconds_left, 0.0))
        return rate, eta

    def line(self, step: int, info: str, now: float, seconds_left: float | None = None) -> str:
        """The plain progress line of ``step`` (``now``: ``time.monotonic()``)."""
        rate, eta = self.rate_and_eta(step, now, seconds_left)
        percent = 100.0 * step / self.total if self.total else 100.0
        return (f"{self.unit} {step}/{self.total} ({percent:.0f}%) {info} | {rate:.2f} {self.unit}s/s | "
                f"elapsed {_clock(now - self.began)} | ETA {_clock(eta)}")

    def update(self, step: int, metrics: dict[str, Any], seconds_left: float | None = None) -> None:
        """Advance to ``step`` and show the ``keys`` metrics; ``seconds_left``: the time budget
        that remains, if the work has one."""
        import time

        info = "  ".join(f"{key} {metrics[key]:.4g}" for key in self.keys
                         if isinstance(metrics.get(key), (int, float)))
        info = info.replace("step_time", "s/step")
        now = time.monotonic()
        if self.lines:
            if step == self.start + 1 or step >= self.total or now - self.last_line >= self.line_every:
                self.last_line = now
                self.progress.console.print(self.line(step, info, now, seconds_left),
                                            highlight=False, markup=False, soft_wrap=True)
            return
        eta = _clock(self.rate_and_eta(step, now, seconds_left)[1])
        self.progress.update(self.task, completed=step, info=info, eta=eta)


__all__ = ["ProgressBar"]
