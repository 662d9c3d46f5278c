"""Training state on disk without pickles: safetensors for tensors, JSON for everything else.

``torch.save`` / ``torch.load(weights_only=False)`` can run arbitrary code from a tampered file;
these helpers store the same state as plain data:

- :func:`save_state` / :func:`load_state`: any nested state of dicts, lists, tuples, numbers,
  strings and tensors as ``{name}.safetensors`` + ``{name}.json`` (the per-process state and the
  recipes' extra state of rewardkit checkpoints);
- :func:`save_optimizer_state` / :func:`load_optimizer_state`: ``optimizer.state_dict()`` as
  ``{name}.safetensors`` (tensors named ``state.{param_idx}.{key}``, e.g. ``state.0.exp_avg``)
  plus ``{name}.json`` (``param_groups`` and every non-tensor value);
- :func:`save_json_state` / :func:`load_json_state`: JSON-able state such as a data loader's
  ``state_dict()``.

Every loader raises :class:`~rewardkit.errors.ConfigError` naming the file when it is missing,
truncated or corrupt, so a damaged checkpoint is reported as such instead of as a stack trace.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError

TENSOR = "__tensor__"
TUPLE = "__tuple__"
ITEMS = "__items__"


# ---------------------------------------------------------------- nested state <-> JSON + tensors


def flatten_state(value: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """A JSON-able copy of ``value``; its tensors go into ``tensors`` under their dotted path.

    Dicts with non-string keys (an optimiser's ``state`` is keyed by parameter index) and tuples
    are tagged so :func:`unflatten_state` restores them exactly.
    """
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().cpu().contiguous().clone()
        return {TENSOR: path}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: flatten_state(v, tensors, f"{path}.{k}" if path else k)
                    for k, v in value.items()}
        return {ITEMS: [[k, flatten_state(v, tensors, f"{path}.{k}" if path else str(k))]
                        for k, v in value.items()]}
    if isinstance(value, tuple):
        return {TUPLE: [flatten_state(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [flatten_state(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store {type(value).__name__} at '{path}' without pickling")


def unflatten_state(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of :func:`flatten_state`."""
    if isinstance(value, dict):
        if set(value) == {TENSOR}:
            return tensors[value[TENSOR]]
        if set(value) == {TUPLE}:
            return tuple(unflatten_state(v, tensors) for v in value[TUPLE])
        if set(value) == {ITEMS}:
            return {k: unflatten_state(v, tensors) for k, v in value[ITEMS]}
        return {k: unflatten_state(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [unflatten_state(v, tensors) for v in value]
    return value


# ---------------------------------------------------------------- files


def save_json_state(state: Any, path: str | Path) -> Path:
    """Write JSON-able ``state`` to ``path`` (flushed and fsynced)."""
    path = Path(path)
    with open(path, "w") as handle:
        json.dump(state, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    return path


def load_json_state(path: str | Path) -> Any:
    """Read :func:`save_json_state` output; ConfigError names a missing or unreadable file."""
    path = Path(path)
    _require(path)
    try:
        return json.loads(path.read_text())
    except Exception as error:  # truncated or corrupt
        raise ConfigError(_unreadable(path, error)) from None


def save_tensor_file(tensors: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Write ``tensors`` (moved to CPU, contiguous) as a safetensors file."""
    from safetensors.torch import save_file

    path = Path(path)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))
    return path


def load_tensor_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; ConfigError names a missing or unreadable file."""
    from safetensors.torch import load_file

    path = Path(path)
    _require(path)
    try:
        return load_file(str(path))
    except Exception as error:  # truncated or corrupt
        raise ConfigError(_unreadable(path, error)) from None


# ---------------------------------------------------------------- nested state, optimisers


def save_state(state: Any, folder: str | Path, name: str) -> Path:
    """Write nested ``state`` (dicts, lists, tuples, numbers, strings, tensors) as
    ``{name}.safetensors`` (its tensors) and ``{name}.json`` (everything else)."""
    folder = Path(folder)
    tensors: dict[str, torch.Tensor] = {}
    meta = flatten_state(state, tensors)
    save_tensor_file(tensors, folder / f"{name}.safetensors")
    save_json_state(meta, folder / f"{name}.json")
    return folder


def load_state(folder: str | Path, name: str) -> Any:
    """Read what :func:`save_state` wrote; ConfigError names a missing or unreadable file."""
    folder = Path(folder)
    meta = load_json_state(folder / f"{name}.json")
    tensor_path = folder / f"{name}.safetensors"
    tensors = load_tensor_file(tensor_path)
    try:
        return unflatten_state(meta, tensors)
    except (KeyError, TypeError, ValueError) as error:
        raise ConfigError(_unreadable(tensor_path, f"missing tensor {error}")) from None


def has_state(folder: str | Path, name: str) -> bool:
    """Whether :func:`save_state` output ``name`` is in ``folder``."""
    return (Path(folder) / f"{name}.json").is_file()


def save_optimizer_state(optimizer: torch.optim.Optimizer, folder: str | Path,
                         name: str = "optimizer") -> Path:
    """Write ``optimizer.state_dict()`` as ``{name}.safetensors`` and ``{name}.json``."""
    return save_state(optimizer.state_dict(), folder, name)


def load_optimizer_state(optimizer: torch.optim.Optimizer, folder: str | Path,
                         name: str = "optimizer") -> None:
    """Restore what :func:`save_optimizer_state` wrote into ``optimizer``."""
    meta_path = Path(folder) / f"{name}.json"
    state = load_state(folder, name)
    try:
        optimizer.load_state_dict(state)
    except (KeyError, ValueError, TypeError) as error:
        raise ConfigError(f"'{meta_path}' does not fit this optimiser ({error}); was it written "
                          "for a different model?") from None


def describe_load_error(error: BaseException) -> str:
    """A one-line reason for a failed ``torch.load`` / safetensors read."""
    text = str(error)
    if "Weights only load failed" in text:
        return "it holds objects other than plain tensors, which could run code, so it was refused"
    first = text.splitlines()[0] if text else ""
    return f"{type(error).__name__}: {first[:160]}" if first else type(error).__name__


def _require(path: Path) -> None:
    if not path.is_file():
        raise ConfigError(f"missing state file '{path}'")


def _unreadable(path: Path, error: Any) -> str:
    return f"state file '{path}' is unreadable (truncated or corrupt: {error})"


__all__ = ["flatten_state", "unflatten_state", "save_json_state", "load_json_state",
           "save_tensor_file", "load_tensor_file", "save_state", "load_state", "has_state",
           "describe_load_error", "save_optimizer_state", "load_optimizer_state"]
