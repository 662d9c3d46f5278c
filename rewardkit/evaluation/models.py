"""What ``rewardkit eval`` accepts as a model: a pipeline folder, a hub id, or a training
checkpoint (``run/checkpoint-N``), which is first written out as a pipeline folder."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from ..errors import ConfigError

#: Written last into an exported folder: which checkpoint it holds (a reuse check).
EXPORTED_FROM = "exported_from.json"


def is_checkpoint(location: str | Path) -> bool:
    """A ``checkpoint-N`` folder inside a run folder that has its ``config.json``."""
    path = Path(location)
    return (path.is_dir() and path.name.startswith("checkpoint-")
            and (path.parent / "config.json").is_file())


def read_run_config(checkpoint: str | Path) -> dict:
    """The ``config.json`` of the run ``checkpoint`` belongs to (how its student was built);
    ConfigError names it when it cannot be read."""
    path = Path(checkpoint).parent / "config.json"
    try:
        run_config = json.loads(path.read_text())
        if not isinstance(run_config, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} cannot be read ({exc}); it says how the student of "
                          f"{checkpoint} was built") from None
    return run_config


def export_checkpoint(checkpoint: str | Path, output: str | Path, device: str = "cpu") -> Path:
    """The student of ``checkpoint`` as a pipeline folder at ``output`` (kept if it is there).

    The run's ``config.json`` says how the student was built (teacher, guidance embedding,
    LoRA); the LCD recipe rebuilds it and loads the checkpoint's weights (the EMA target goes
    to ``unet_target``), whichever recipe trained it, since every LCD-based recipe trains the
    same student.
    """
    from ..recipes.lcd import LCDRecipe
    from ..recipes.lcd_config import LCDConfig

    checkpoint, output = Path(checkpoint), Path(output)
    marker = output / EXPORTED_FROM
    source = str(checkpoint.resolve())
    if marker.is_file() and json.loads(marker.read_text()).get("checkpoint") == source:
        return output  # exported completely from this very checkpoint before
    run_config = read_run_config(checkpoint)
    fields = {f.name for f in dataclasses.fields(LCDConfig) if f.init}
    values = {k: v for k, v in run_config.items() if k in fields}
    values.update(output_dir=str(output.parent), report_to="none")
    recipe = LCDRecipe(LCDConfig(**values))
    partial = output.with_name(output.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    recipe.export_pipeline(checkpoint, partial, device=device)
    (partial / EXPORTED_FROM).write_text(json.dumps({"checkpoint": source}))
    shutil.rmtree(output, ignore_errors=True)  # an older or unfinished export
    partial.rename(output)  # complete or absent: a crash leaves only the .partial folder
    return output


def export_on_main(checkpoint: str | Path, output: str | Path, device: str = "cpu") -> Path:
    """:func:`export_checkpoint` on the main process; the others wait for it."""
    from .runner import process_state

    state = process_state()
    if state.is_main_process:
        export_checkpoint(checkpoint, output, device)
    state.wait_for_everyone()
    return Path(output)
