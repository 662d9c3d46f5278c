"""The training machinery every recipe runs on.

- :mod:`.loop`: :class:`TrainingLoop`, the one loop (a recipe subclasses it and writes its
  algorithm: ``build_models`` and ``losses``, plus optional hooks);
- :mod:`.config`: :class:`TrainingConfig`, the keys every recipe shares, and their checks;
- :mod:`.step`: :func:`lcd_forward`, one LCD step as in the paper, and :class:`StepOutputs`;
- :mod:`.runtime`: the ``Accelerator`` (CPU data parallelism, DeepSpeed);
- :mod:`.optim`: AdamW / AdamW8bit and the LR schedule;
- :mod:`.checkpoint`: atomic, rotating, resumable checkpoints;
- :mod:`.validation`: LCMScheduler sample grids (the sampling itself: :mod:`rewardkit.sampling`);
- :mod:`.metrics`: ``metrics.jsonl`` and the progress bar;
- :mod:`.safe_state`: optimiser, generator and loader state as safetensors + JSON.
"""

from .config import TrainingConfig
from .loop import TrainingLoop
from .step import LCDHyper, StepOutputs, lcd_forward

__all__ = ["LCDHyper", "StepOutputs", "TrainingConfig", "TrainingLoop", "lcd_forward"]
