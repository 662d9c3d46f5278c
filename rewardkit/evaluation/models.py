"""What ``rewardkit eval`` accepts as a model: a pipeline folder, a hub id, or a training
checkpoint (``run/checkpoint-N``), which is first written out as a pipeline folder."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..errors import ConfigError


def is_checkpoint(location: str | Path) -> bool:
    """A ``checkpoint-N`` folder inside a run folder that has its ``config.json``."""
    path = Path(location)
    return (path.is_dir() and path.name.startswith("checkpoint-")
            and (path.parent / "config.json").is_file())


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
    if (output / "model_index.json").is_file():
        return output
    try:
        run_config = json.loads((checkpoint.parent / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{checkpoint.parent / 'config.json'} cannot be read ({exc}); it says "
                          f"how the student of {checkpoint} was built") from None
    fields = {f.name for f in dataclasses.fields(LCDConfig) if f.init}
    values = {k: v for k, v in run_config.items() if k in fields}
    values.update(output_dir=str(output.parent), report_to="none")
    recipe = LCDRecipe(LCDConfig(**values))
    return recipe.export_pipeline(checkpoint, output, device=device)
