"""A new run never destroys an old one: the output-folder check every training recipe makes
before it writes anything.

A folder *holds a run* when it has any of :data:`RUN_MARKERS` or a ``checkpoint-N`` folder. A
fresh run (no ``resume_from_checkpoint``) into such a folder is refused, naming the folder and
the ways out; ``overwrite_output_dir`` removes the old run's files first (only the files a run
writes, :data:`RUN_FILES`, never anything else in the folder). A folder that holds no run but
files with the names a run writes (a teacher's ``unet/`` with its ``config.json``) is refused
whatever the flags: those files are someone else's.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from ..errors import ConfigError
from .checkpoint import list_checkpoints

#: Entries whose presence means a run was here (a checkpoint, a final model, a metrics log).
RUN_MARKERS = ("metrics.jsonl", "pipeline", "proxy")
#: Everything a run writes into its output folder (removed by ``overwrite_output_dir``).
RUN_FILES = RUN_MARKERS + (
    "config.json", "logs", "validation", "proxy_heldout", "proxy_replay.safetensors",
    "preference_set", "heldout_preference_set", "report.md", "eval.json", "comparison.png",
    "training_curves.png")
_CHECKPOINT = re.compile(r"^\.?checkpoint-\d+(\.tmp)?$")


def run_entries(output_dir: str | Path) -> list[str]:
    """The names in ``output_dir`` that show a run was there (sorted; empty if none)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir()
                  if p.name in RUN_MARKERS or (_CHECKPOINT.match(p.name) and p.is_dir()))


#: Files of :data:`RUN_FILES` a run writes whole (not folders it adds to), which a user's own
#: file of the same name would be lost to.
REPLACED_FILES = ("config.json", "report.md", "eval.json", "comparison.png",
                  "training_curves.png")


def is_run_config(path: str | Path) -> bool:
    """Whether ``path`` is a run's ``config.json`` (a JSON object with ``output_dir`` and
    ``pretrained_teacher_model``), not a model's (diffusers' or transformers')."""
    import json

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"output_dir", "pretrained_teacher_model"} <= set(data)


def foreign_entries(output_dir: str | Path) -> list[str]:
    """Files in ``output_dir`` a run would replace (:data:`REPLACED_FILES`) that no run wrote:
    the folder holds no run (:func:`run_entries` is empty) and no run's ``config.json`` (an
    interrupted set-up's). Sorted; empty if none."""
    folder = Path(output_dir)
    if not folder.is_dir() or run_entries(folder) or is_run_config(folder / "config.json"):
        return []
    return sorted(p.name for p in folder.iterdir() if p.name in REPLACED_FILES)


def check_output_dir(output_dir: str | Path, resume: str | None, overwrite: bool) -> None:
    """Refuse, before anything is written, a run that would replace another one or files it
    did not write.

    Allowed: an empty or new folder, or one holding only files a run never writes;
    ``overwrite`` (the old run is removed by :func:`clear_run`); a resume (``latest`` needs a
    checkpoint when the folder holds a run).
    """
    check_writable(output_dir)
    foreign = foreign_entries(output_dir)
    if foreign:
        raise ConfigError(
            f"output_dir '{output_dir}' holds {', '.join(foreign[:4])}"
            f"{', ...' if len(foreign) > 4 else ''}, which no rewardkit run wrote (no "
            "metrics.jsonl or checkpoint beside it) and which a run would replace; choose "
            "another --output_dir")
    found = run_entries(output_dir)
    if not found or overwrite:
        return
    shown = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
    if resume:
        if resume == "latest" and not list_checkpoints(output_dir):
            raise ConfigError(
                f"output_dir '{output_dir}' holds a run ({shown}) but no complete checkpoint to "
                "resume from; replace it with --overwrite_output_dir, or choose another "
                "--output_dir")
        return
    raise ConfigError(
        f"output_dir '{output_dir}' already holds a run ({shown}); continue it with "
        "--resume_from_checkpoint latest, replace it with --overwrite_output_dir (removes the old "
        "run first), or choose another --output_dir")


def check_writable(output_dir: str | Path) -> None:
    """Raise ConfigError naming ``output_dir`` when it (or, if it does not exist yet, the folder
    it would be created in) cannot be written to."""
    folder = Path(output_dir).expanduser().absolute()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"output_dir '{output_dir}': '{existing}' is a file, not a folder; "
                          "choose another --output_dir")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"output_dir '{output_dir}' is not writable ('{existing}' is read-only "
                          "or not yours); choose another --output_dir")


def clear_run(output_dir: str | Path) -> list[str]:
    """Remove the files of the run in ``output_dir`` (checkpoints and :data:`RUN_FILES`);
    returns the names removed. Other files in the folder are left alone."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.iterdir()):
        if path.name in RUN_FILES or _CHECKPOINT.match(path.name):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path.name)
    return removed


def clear_for_overwrite(accelerator, output_dir: str | Path, overwrite: bool) -> None:
    """With ``overwrite``, the main process removes the old run (:func:`clear_run`) and says
    what it removed; every process waits for it."""
    if overwrite and accelerator.is_main_process:
        removed = clear_run(output_dir)
        if removed:
            accelerator.print(f"overwrite_output_dir: removed {', '.join(removed)} from "
                              f"{output_dir}")
    accelerator.wait_for_everyone()


__all__ = ["REPLACED_FILES", "RUN_FILES", "RUN_MARKERS", "check_output_dir", "check_writable", "clear_for_overwrite",
           "clear_run", "foreign_entries", "is_run_config", "run_entries"]
