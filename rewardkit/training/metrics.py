"""Training metrics: one JSON object per optimiser step appended to ``metrics.jsonl``, and a
rich progress bar showing loss, learning rate and seconds per step."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)


class MetricsLog:
    """Appends ``{"step": ..., **metrics}`` lines to a JSONL file (main process only)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def truncate_after(self, step: int) -> None:
        """Drop rows of steps after ``step`` (a fresh run: 0; a resumed run: the checkpoint's step),
        so the file describes exactly one run's history."""
        if not self.path.is_file():
            return
        keep = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in keep))

    def append(self, step: int, metrics: dict[str, Any]) -> None:
        """Write one line; non-finite floats become ``null`` (valid JSON)."""
        row = {"step": step}
        for key, value in metrics.items():
            if isinstance(value, float) and not math.isfinite(value):
                value = None
            row[key] = value
        with open(self.path, "a") as handle:
            handle.write(json.dumps(row) + "\n")


def write_run_config(accelerator: Any, config: Any, output_dir: str | Path) -> None:
    """Write the run's ``config.json`` (main process), once every check of the set-up passed:
    a run that fails before training leaves an old run's config untouched. Secrets (a reward
    server's ``token`` in ``reward_params``) are written as ``<redacted>``."""
    import json

    from ..config import config_to_dict
    from ..secrets import redact

    if accelerator.is_main_process:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.json").write_text(
            json.dumps(redact(config_to_dict(config)), indent=2, default=str))
    accelerator.wait_for_everyone()


def start_logging(accelerator: Any, config: Any, output_dir: str | Path, global_step: int) -> MetricsLog:
    """A recipe's logging at the start (or resume) of a run: the accelerate trackers with the
    config's scalar values (main process, when trackers are on) and ``metrics.jsonl``, cut back
    to ``global_step`` so it describes this run's history only (secrets redacted)."""
    from ..config import config_to_dict
    from ..secrets import redact

    if accelerator.is_main_process and accelerator.log_with:
        accelerator.init_trackers(config.tracker_project_name, config={
            k: v for k, v in redact(config_to_dict(config)).items()
            if isinstance(v, (int, float, str, bool))})
    log = MetricsLog(Path(output_dir) / "metrics.jsonl")
    if accelerator.is_main_process:
        log.truncate_after(global_step)
    return log


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a ``metrics.jsonl`` file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class TrainingProgress:
    """Progress over optimiser steps: a rich bar on a terminal, plain lines elsewhere.

    In a log file or a cluster job (stdout is not a terminal) a live bar prints nothing useful,
    so a line ``step 120/600 (20%) lcd_loss 0.0123 lr 0.0001 s/step 0.54 | 1.85 steps/s |
    elapsed 0:01:05 | ETA 0:04:20`` is printed at the first step, every ``line_every_seconds``
    (30) and at the last step, as accelerate-based trainers log. ``keys``: the metrics shown
    (``step_time`` is shown as ``s/step``). ``label``/``unit``: the bar's title and what it counts
    (``rewardkit eval`` counts images). Disabled: a no-op.
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
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            disable=not enabled, transient=False, console=console)
        self.lines = enabled and not self.progress.console.is_terminal
        if self.lines:
            self.progress.disable = True
        self.line_every = line_every_seconds
        self.began = self.last_line = time.monotonic()
        self.task = self.progress.add_task(label, total=total, completed=start, info="")

    def __enter__(self) -> "TrainingProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def line(self, step: int, info: str, now: float) -> str:
        """The plain progress line of ``step`` (``now``: ``time.monotonic()``)."""
        elapsed = now - self.began
        done = step - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        percent = 100.0 * step / self.total if self.total else 100.0
        return (f"{self.unit} {step}/{self.total} ({percent:.0f}%) {info} | {rate:.2f} {self.unit}s/s | "
                f"elapsed {_clock(elapsed)} | ETA {_clock(eta)}")

    def update(self, step: int, metrics: dict[str, Any]) -> None:
        """Advance to ``step`` and show loss, lr and s/step."""
        import time

        info = "  ".join(f"{key} {metrics[key]:.4g}" for key in self.keys
                         if isinstance(metrics.get(key), (int, float)))
        info = info.replace("step_time", "s/step")
        if self.lines:
            now = time.monotonic()
            if step == self.start + 1 or step >= self.total or now - self.last_line >= self.line_every:
                self.last_line = now
                self.progress.console.print(self.line(step, info, now), highlight=False,
                                            markup=False, soft_wrap=True)
            return
        self.progress.update(self.task, completed=step, info=info)


def log_validation_images(accelerator: Any, path: str | Path, step: int,
                          key: str = "validation") -> None:
    """Send a saved validation grid (PNG) to every accelerate tracker that takes images
    (tensorboard's ``add_images``, wandb's ``Image``); trackers without images are skipped."""
    import numpy as np
    from PIL import Image

    trackers = [t for t in getattr(accelerator, "trackers", []) if hasattr(t, "log_images")]
    if not trackers:
        return
    with Image.open(path) as image:
        grid = np.asarray(image.convert("RGB"))
    for tracker in trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({key: grid[None]}, step=step, dataformats="NHWC")
        else:
            tracker.log_images({key: [grid]}, step=step)
