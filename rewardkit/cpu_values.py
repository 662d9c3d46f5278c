"""Reading values of tensors that live on the CPU by construction (drawn from a CPU generator).

Such a read costs no device synchronisation on any machine, so the host-sync counter
(:mod:`rewardkit.testing.host_syncs`) does not count it; :func:`cpu_tolist` refuses a tensor on
an accelerator, so a device value cannot hide behind it.
"""

from __future__ import annotations

import torch


def cpu_tolist(values: torch.Tensor) -> list:
    """``values.tolist()`` for a CPU tensor; a ``ValueError`` for any other device."""
    if values.device.type != "cpu":
        raise ValueError(f"cpu_tolist reads CPU tensors only; got one on {values.device}")
    return values.tolist()
