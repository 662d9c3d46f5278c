"""``rewardkit rewards ...``: reward-model commands (registered by the built-in rewards plugin).

``rewardkit rewards score IMAGES... --prompt TEXT --reward NAME [--param key=value ...] [--json]``
scores image files: each file is read with PIL, converted to RGB and to a [0, 1] tensor, and
scored with its prompt (one ``--prompt`` for all images, or one per image in order). Parameter
values are converted to the RM's parameter types (JSON for mappings, e.g.
``--param 'components={"clip-score": 1.0}'``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import sys
import typing
from pathlib import Path
from typing import Any, List, Optional

import numpy as np
import torch
import typer

from ..config import coerce, normalise_key
from ..errors import ConfigError, DataError

app = typer.Typer(help="Score images with reward models.", no_args_is_help=True)


def load_image(path: Path) -> torch.Tensor:
    """Read an image file as a float RGB tensor ``[1, 3, H, W]`` in [0, 1]; DataError names the file."""
    from PIL import Image, UnidentifiedImageError

    from ..data.transforms import pil_to_rgb

    try:
        with Image.open(path) as image:
            array = np.asarray(pil_to_rgb(image), dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"cannot read image '{path}': {exc}") from exc
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def parameter_types(factory: Any) -> dict[str, Any]:
    """Parameter name -> annotation of a component factory (its Config dataclass or signature)."""
    config_class = getattr(factory, "Config", None)
    target = config_class if dataclasses.is_dataclass(config_class) else (
        factory.__init__ if inspect.isclass(factory) else factory)
    try:
        return typing.get_type_hints(target)
    except Exception:  # unresolvable annotations: pass the strings through unchanged
        return {}


def parse_params(items: list[str], factory: Any) -> dict[str, Any]:
    """``["quality=80"]`` -> ``{"quality": 80}``, converted to the factory's parameter types."""
    types = parameter_types(factory)
    params: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = normalise_key(key)
        if not eq or not key:
            raise ConfigError(f"--param '{item}' must look like key=value")
        params[key] = coerce(key, value, types[key]) if key in types else value
    return params


def score_files(images: list[Path], prompts: list[str], reward: str,
                params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Score image files with reward model ``reward``; one record per file, in order.

    Images of the same size are scored together in one batch.
    """
    from ..plugins import get_host

    if not images:
        raise ConfigError("give at least one image file to score")
    if len(prompts) == 1:
        prompts = prompts * len(images)
    if len(prompts) != len(images):
        raise ConfigError(f"got {len(images)} images but {len(prompts)} prompts; give one "
                          "--prompt for all images or one per image")
    tensors = [load_image(path) for path in images]
    rm = get_host().get("reward", reward).build(**(params or {}))
    if rm.input_space != "pixels":
        raise ConfigError(f"reward model '{reward}' scores {rm.input_space}, not image files")
    scores: list[float] = [0.0] * len(images)
    groups: dict[tuple[int, int], list[int]] = {}
    for index, tensor in enumerate(tensors):
        groups.setdefault(tuple(tensor.shape[-2:]), []).append(index)
    with torch.no_grad():
        for indices in groups.values():
            batch = torch.cat([tensors[i] for i in indices]).to(rm.device)
            values = rm(batch, [prompts[i] for i in indices]).cpu().tolist()
            for i, value in zip(indices, values):
                scores[i] = float(value)
    return [{"image": str(path), "prompt": prompt, "reward": reward, "score": score}
            for path, prompt, score in zip(images, prompts, scores)]


@app.command("score")
def score_command(
    images: List[Path] = typer.Argument(..., help="Image files (anything PIL reads)."),
    prompt: List[str] = typer.Option(..., "--prompt", "-p",
                                     help="The prompt: once for all images, or once per image."),
    reward: str = typer.Option(..., "--reward", "-r", help="A registered reward model."),
    param: Optional[List[str]] = typer.Option(None, "--param",
                                              help="key=value parameter of the reward model."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Score image files with a reward model."""
    from ..plugins import get_host

    spec = get_host().get("reward", reward)
    params = parse_params(list(param or []), spec.factory)
    # Libraries imported while loading a model may log to stdout; keep stdout for the results.
    with contextlib.redirect_stdout(sys.stderr):
        records = score_files(list(images), list(prompt), reward, params)
    if as_json:
        typer.echo(json.dumps(records, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"reward: {reward}")
    table.add_column("image", overflow="fold")  # full paths, wrapped, never elided
    table.add_column("prompt", overflow="fold")
    table.add_column("score", no_wrap=True)
    for record in records:
        table.add_row(record["image"], record["prompt"], f"{record['score']:.6g}")
    Console().print(table)
