"""The training machinery of the ``lcd`` recipe (and of ``rg-lcd``, which extends it).

- :mod:`.config`: the checks the recipes' configs share (the ``lcd`` config itself is
  :class:`rewardkit.recipes.lcd_config.LCDConfig`);
- :mod:`.step`: :func:`lcd_forward`, one LCD step as in the paper, and :class:`StepOutputs`;
- :mod:`.runtime`: the ``Accelerator`` (CPU data parallelism, DeepSpeed);
- :mod:`.optim`: AdamW / AdamW8bit and the LR schedule;
- :mod:`.checkpoint`: atomic, rotating, resumable checkpoints;
- :mod:`.validation`: LCMScheduler sample grids (the sampling itself: :mod:`rewardkit.sampling`);
- :mod:`.metrics`: ``metrics.jsonl`` and the progress bar;
- :mod:`.safe_state`: optimiser, generator and loader state as safetensors + JSON.

The loop itself is :class:`rewardkit.recipes.lcd.LCDRecipe`.
"""

from .step import LCDHyper, StepOutputs, lcd_forward

__all__ = ["LCDHyper", "StepOutputs", "lcd_forward"]
