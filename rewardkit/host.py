"""Reading tensors that live on the host by construction (drawn from a CPU generator).

Such a read costs no device synchronisation on any machine, so the host-sync counter
(:mod:`rewardkit.testing.host_syncs`) does not count it; :func:`host_list` refuses a tensor on an
accelerator, so a device value cannot hide behind it.
"""

from __future__ import annotations

import torch


def host_list(values: torch.Tensor) -> list:
    """``values.tolist()`` for a CPU tensor; a ``ValueError`` for any other device."""
    if values.device.type != "cpu":
        raise ValueError(f"host_list reads host tensors only; got one on {values.device}")
    return values.tolist()
