"""Training metrics: one JSON object per optimiser step appended to ``metrics.jsonl``, the
run's ``config.json``, and validation images sent to the trackers."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any



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
