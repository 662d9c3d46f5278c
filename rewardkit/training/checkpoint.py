"""Atomic, rotating training checkpoints: ``output_dir/checkpoint-{step}``.

A checkpoint is written into a hidden temporary folder next to the final one and renamed into
place only once every process has finished writing, so a crash mid-write leaves the previous
checkpoint untouched and usable. ``trainer_state.json`` is written last, and only folders holding
it count as checkpoints. After a successful save the oldest checkpoints beyond the limit are
removed (never before: the newest complete checkpoint always survives).

Layout of one checkpoint of the training loop::

    checkpoint-{step}/
      model.safetensors, optimizer.safetensors/.json,      # the trained module, its optimiser,
      scheduler.json, random_states_{rank}.safetensors/.json  # LR schedule, RNGs (train_state.py)
      rank_state_{rank}.safetensors / .json                # step generator + data position, per rank
      extra_state.safetensors / .json                      # a recipe's checkpoint_state(), if any
      (a recipe's files: save_files, e.g. the EMA target, the LRM)
      trainer_state.json                                   # global step; marks the folder complete
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import ConfigError
from ..files import replace_path
from .errors import TrainingError
from .safe_state import describe_load_error, has_state, load_json_state, load_state, save_state

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"


def rank_state_name(rank: int) -> str:
    """Name (without suffix) of the per-process state of ``rank`` (generators, data position)."""
    return f"rank_state_{rank}"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``output_dir`` as ``(step, path)``, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for child in output_dir.iterdir():
        match = CHECKPOINT_PATTERN.match(child.name)
        if match and (child / TRAINER_STATE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """The checkpoint folder for ``resume_from_checkpoint`` ('latest' may find none: ``None``)."""
    if not resume:
        return None
    if resume == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1][1] if checkpoints else None
    path = Path(resume).expanduser()
    inside = Path(output_dir) / resume  # diffusers' convention: a checkpoint name in output_dir
    if not path.is_absolute() and (inside / TRAINER_STATE).is_file():
        path = inside
    if not (path / TRAINER_STATE).is_file():
        raise ConfigError(f"resume_from_checkpoint: '{resume}' is not a complete checkpoint "
                          f"(no {TRAINER_STATE})")
    return path


def check_resume_step(checkpoint: Path, step: int, total: int, key: str) -> None:
    """Refuse to resume a checkpoint that is already past the run's last step."""
    if step > total:
        raise ConfigError(f"resume_from_checkpoint: '{checkpoint}' is at step {step}, beyond this "
                          f"run's {key} = {total}; raise {key} to at least {step} to train on")


def read_trainer_state(checkpoint: str | Path) -> dict[str, Any]:
    """The ``trainer_state.json`` of a checkpoint (a damaged one is named)."""
    state = load_json_state(Path(checkpoint) / TRAINER_STATE)
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        raise ConfigError(f"state file '{Path(checkpoint) / TRAINER_STATE}' has no integer "
                          "global_step")
    return state


def save_checkpoint(accelerator: Any, output_dir: str | Path, step: int,
                    write_rank_files: Callable[[Path], None],
                    write_main_files: Callable[[Path], None],
                    trainer_state: dict[str, Any], total_limit: int | None = None) -> Path:
    """Write ``checkpoint-{step}`` atomically; every process must call this.

    ``write_rank_files(tmp)`` runs on every process (the trained state, its per-rank state);
    ``write_main_files(tmp)`` runs on the main process only (a recipe's own state and files).
    """
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f".checkpoint-{step}.tmp"
    try:
        if accelerator.is_main_process:
            if tmp.exists():
                shutil.rmtree(tmp)  # left over by a crash: never complete
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        write_rank_files(tmp)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_main_files(tmp)
            _write_json_atomic(tmp / TRAINER_STATE, {"global_step": step, **trainer_state})
            _fsync_dir(tmp)
            replace_path(tmp, final)
            if total_limit is not None:
                for _, old in list_checkpoints(output_dir)[:-total_limit]:
                    shutil.rmtree(old, ignore_errors=True)
    except Exception as error:
        if not _is_write_failure(error):
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # never leave half a checkpoint behind
        previous = [p.name for _, p in list_checkpoints(output_dir)]
        kept = (f"the previous checkpoint {previous[-1]} is intact"
                if previous else "no earlier checkpoint exists")
        reason = ("no space left" if getattr(error, "errno", None) == errno.ENOSPC
                  or "space" in str(error).lower() else f"cannot write ({error})")
        raise CheckpointWriteError(
            f"{reason} writing checkpoint-{step} in {output_dir}; {kept}; free space (or fix the "
            f"folder) and resume with --resume_from_checkpoint latest") from None
    accelerator.wait_for_everyone()
    return final


class CheckpointWriteError(TrainingError):
    """A checkpoint could not be written (disk full, read-only folder); nothing half-written is
    left, and the previous checkpoint is untouched."""


def _is_write_failure(error: BaseException) -> bool:
    """OSError (ENOSPC, EROFS, EACCES, ...) or a wrapped one: torch's writer reports a full disk
    as RuntimeError ("unexpected pos ...", "file write failed"), safetensors' as its own
    SafetensorError (neither OSError nor RuntimeError: "No space left on device", "I/O
    error")."""
    if isinstance(error, OSError):
        return True
    text = str(error).lower()
    markers = ("unexpected pos", "write failed", "no space", "file write", "i/o error",
               "read-only file system", "permission denied", "disk quota")
    wrapped = isinstance(error, RuntimeError) or type(error).__name__ == "SafetensorError"
    return wrapped and any(marker in text for marker in markers)


def load_checkpoint(accelerator: Any, checkpoint: str | Path) -> dict[str, Any]:
    """Restore what ``accelerate.save_state`` wrote; returns the trainer state.

    accelerate reads its ``.bin``/``.pkl`` files with ``torch.load(weights_only=True)`` (plain
    tensors and containers; a pickle that would run code is refused). When that fails, the
    error names the unreadable file and the other checkpoints of the run.
    """
    checkpoint = Path(checkpoint)
    try:
        accelerator.load_state(str(checkpoint))
    except Exception as error:
        culprit = _unreadable_torch_file(checkpoint)
        where = f"'{culprit}'" if culprit else f"'{checkpoint}'"
        raise ConfigError(f"resume_from_checkpoint: {where} could not be restored "
                          f"({describe_load_error(error)}); nothing in it was run; "
                          f"{earlier_checkpoint_hint(checkpoint)}") from None
    _check_random_states(checkpoint, accelerator.process_index)
    return read_trainer_state(checkpoint)


def earlier_checkpoint_hint(checkpoint: Path) -> str:
    """How to go on when ``checkpoint`` cannot be restored: the newest other complete checkpoint
    of the run, or a new run."""
    checkpoint = Path(checkpoint)
    others = [p for _, p in list_checkpoints(checkpoint.parent) if p != checkpoint]
    if not others:
        return "no other checkpoint exists: start a new run (--overwrite_output_dir)"
    return f"resume from {others[-1].name} instead (--resume_from_checkpoint {others[-1].name})"


@contextlib.contextmanager
def restoring(checkpoint: Path) -> Iterator[None]:
    """Add :func:`earlier_checkpoint_hint` to a ConfigError raised while restoring
    ``checkpoint`` (an unreadable state file, an optimiser that does not fit)."""
    try:
        yield
    except ConfigError as error:
        text = str(error)
        if "--resume_from_checkpoint" in text or "--overwrite_output_dir" in text:
            raise
        raise ConfigError(f"{text.rstrip('.')}; {earlier_checkpoint_hint(checkpoint)}") from None


def _unreadable_torch_file(checkpoint: Path) -> Path | None:
    """The first of accelerate's files in ``checkpoint`` that cannot be read: a ``.safetensors``
    file safetensors cannot open, or a ``.bin``/``.pkl`` file accelerate's weights-only load
    refuses (only looked for after a failed restore)."""
    from accelerate.utils.other import load
    from safetensors import safe_open

    for path in sorted(checkpoint.iterdir()):
        if not path.is_file() or path.suffix not in (".bin", ".pkl", ".safetensors"):
            continue
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as handle:
                    for key in handle.keys():
                        handle.get_slice(key)
            else:
                load(path, map_location="cpu")
        except Exception:
            return path
    return None


def _check_random_states(checkpoint: Path, rank: int) -> None:
    """accelerate skips an unreadable ``random_states_{rank}.pkl`` silently (the resumed run
    would then differ from an uninterrupted one): refuse it, naming the file."""
    from accelerate.utils.other import load

    path = checkpoint / f"random_states_{rank}.pkl"
    try:
        load(path)
    except Exception as error:
        raise ConfigError(f"resume_from_checkpoint: '{path}' is missing or unreadable "
                          f"({describe_load_error(error)}); nothing in it was run; "
                          f"{earlier_checkpoint_hint(checkpoint)}") from None


def save_rank_state(folder: Path, rank: int, state: dict[str, Any]) -> None:
    """Per-process state (generator states, loader position) as safetensors + JSON."""
    save_state(state, folder, rank_state_name(rank))


def load_rank_state(folder: Path, rank: int) -> dict[str, Any]:
    """The per-process state saved by :func:`save_rank_state`."""
    folder = Path(folder)
    name = rank_state_name(rank)
    if has_state(folder, name):
        return load_state(folder, name)
    raise ConfigError(f"resume_from_checkpoint: '{folder}' has no state for process {rank} "
                      "(was it written with a different number of processes?)")


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


