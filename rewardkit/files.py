"""Small file-system helpers shared by everything that writes results (pipelines, checkpoints,
the world's assets)."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: Path) -> None:
    """Give ``path`` (a file, or a folder and everything in it) the permissions a new file gets
    under the user's umask: safetensors writes its files readable by their owner only (0600),
    so a colleague on a shared machine could not read a checkpoint or a saved model."""
    mask = current_umask()
    path = Path(path)
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for item in paths:
        if item.is_symlink():
            continue
        try:
            os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~mask)
        except OSError:  # not ours (a shared folder); its permissions stay as they are
            pass


def replace_path(src: Path, dst: Path) -> None:
    """Rename ``src`` (a folder or file) onto ``dst`` so that ``dst`` is never half-written.

    An existing ``dst`` is first renamed aside and removed only once ``src`` is in place, so a
    crash at any point leaves either the old or the new ``dst`` whole. ``src`` first gets the
    permissions of the user's umask (:func:`follow_umask`).
    """
    src, dst = Path(src), Path(dst)
    follow_umask(src)
    old = None
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def write_aside(path: Path, write: Callable[[Path], Any]) -> Path:
    """``write(tmp)`` into a fresh sibling of ``path``, then :func:`replace_path` it onto
    ``path``: a crash while writing leaves the previous ``path`` (or none), never half of one."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp"
    if tmp.is_dir():
        shutil.rmtree(tmp)
    elif tmp.exists():
        tmp.unlink()
    write(tmp)
    replace_path(tmp, path)
    return path
