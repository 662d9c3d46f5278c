"""What ``rewardkit run draft`` and ``rewardkit run grpo`` do with no arguments: fine-tune a
world student against ``world-judge`` on a laptop.

Both recipes fine-tune a *distilled* student. The world ships a teacher, not a student, so
:func:`world_student` distils one first with plain ``lcd`` (:data:`STUDENT_STEPS` steps into
``lcd-world/``, a few minutes on 2 cores; later runs reuse it). Then:

- ``draft``: DRaFT-1 on 2-step samples. ``world-judge`` is not differentiable, so the student
  maximises the shipped pretrained LRM, which keeps learning the judge online (the LRM as a
  bridge). Learning rate 3e-5 with the LCD term against the teacher at weight 1
  (:data:`DRAFT_WORLD_SETTINGS`, picked on the world's *validation* captions; see
  ``docs/draft.md``): at the shared 1e-4 and no LCD term the student collapses;
- ``grpo``: GRPO over the student's 4-step stochastic sampler, with the judge as the reward
  (no gradient needed).

Both train on the world's training captions, and both guard against reward hacking with
``world-scorer`` as the gold panel and ``world-fd`` to the teacher's samples.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from .assets import LRM, TEACHER, asset_path
from .default_run import default_rg_lcd_overrides, validation_captions
from .lrm import WORLD_LRM_PARAMS

#: Where the world's distilled student is kept (relative to the working folder).
STUDENT_DIR = "lcd-world"
#: Optimiser steps of that distillation.
STUDENT_STEPS = 400
#: draft's own world settings, chosen by a sweep scored on the world's validation split (2 min
#: of training each, seed 100): lr 1e-4 alone collapses, 3e-6 alone gains little, and the LCD
#: term at weight 1 keeps the student on the teacher's ODE while the reward pulls it.
DRAFT_WORLD_SETTINGS = {"learning_rate": 3e-5, "lcd_weight": 1.0}
#: The world's training captions as a prompt set spec.
TRAIN_PROMPTS = "world?split=train&limit=4096"


def world_student(folder: str | Path = STUDENT_DIR, steps: int = STUDENT_STEPS) -> Path:
    """The world's distilled student (``folder/pipeline``): the one there, or distilled now with
    ``lcd`` on the shipped teacher and the world's data (the default run's settings)."""
    import rewardkit as rk
    from ..recipes.lcd_config import LCDConfig

    pipeline = Path(folder) / "pipeline"
    if (pipeline / "model_index.json").is_file():
        return pipeline
    print(f"no world student in {pipeline}: distilling one first (lcd, {steps} steps on the "
          "shipped teacher; later runs reuse it)", flush=True)
    keys = {f.name for f in fields(LCDConfig)}
    overrides = {k: v for k, v in default_rg_lcd_overrides().items() if k in keys}
    overrides.update(output_dir=str(folder), max_train_steps=steps, validation_steps=0,
                     checkpointing_steps=0, gold_panel=[], guard_fd_metric=None,
                     overwrite_output_dir=True)
    rk.recipe("lcd", overrides).run()
    return pipeline


def world_tuning_overrides(recipe: str, chosen: dict[str, Any]) -> dict[str, Any]:
    """Config overrides of ``draft`` or ``grpo`` on the embedded world (``chosen``: the user's
    values, which win; a given ``pretrained_student`` skips the distillation)."""
    student = chosen.get("pretrained_student") or str(world_student())
    common: dict[str, Any] = {
        "pretrained_teacher_model": str(asset_path(TEACHER)),
        "pretrained_student": student,
        "train_shards_path_or_url": TRAIN_PROMPTS,
        "output_dir": f"{recipe}-world",
        "resolution": 32,
        "learning_rate": 1e-4,
        "lr_scheduler": "constant",
        "validation_steps": 50,
        "validation_prompts": validation_captions(),
        "validation_seeds": [0],
        "checkpointing_steps": 100,
        "checkpoints_total_limit": 1,
        "seed": 0,
        "report_to": "none",
        "reward": "world-judge",
        "gold_panel": ["world-scorer"],
        "guard_fd_metric": "world-fd",
        "guard_prompts": validation_captions(),
        "guard_seeds": [0, 1, 2, 3],
    }
    if recipe == "draft":
        return {**common, "train_batch_size": 16, "max_train_steps": 300, "sample_steps": 2,
                "grad_steps": "last 1", "proxy": "lrm", "pretrained_proxy": str(asset_path(LRM)),
                "proxy_params": {"trainable": WORLD_LRM_PARAMS["trainable"]},
                "proxy_lr": 1e-4, **DRAFT_WORLD_SETTINGS}
    return {**common, "train_batch_size": 8, "group_size": 4, "max_train_steps": 200,
            "sample_steps": 4, "clip_range": 0.2, "updates_per_rollout": 2}


__all__ = ["DRAFT_WORLD_SETTINGS", "STUDENT_DIR", "TRAIN_PROMPTS", "world_student", "world_tuning_overrides"]
