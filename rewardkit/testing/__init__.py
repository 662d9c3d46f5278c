"""Test helpers for rewardkit and for third-party plugin authors.

- :func:`check_reward_model`: the reward-model contract checks (shape, finiteness, input range,
  gradient flow, determinism, batch independence, clear errors). Run it in a plugin's own tests::

      from rewardkit.testing import check_reward_model

      def test_my_rm_meets_the_contract():
          check_reward_model(MyRewardModel(...))

- ``rewardkit.testing.tiny_clip``: tiny CLIP models, tokenizers and aesthetic heads built offline.
- ``rewardkit.testing.tiny_training``: a tiny image folder and LCD config for training tests.
- ``build_tiny_sd_pipeline`` (from ``rewardkit.testing.tiny_sd``), ``check_solver`` (from
  ``rewardkit.testing.solver_contract``) and ``check_backbone`` (from
  ``rewardkit.testing.backbone_contract``) are re-exported lazily, so a missing optional module
  never breaks ``import rewardkit.testing``.
"""

from __future__ import annotations

import importlib
from typing import Any

from .reward_contract import check_reward_model

#: Names re-exported lazily from sibling modules: name -> module.
_LAZY = {
    "build_tiny_sd_pipeline": "rewardkit.testing.tiny_sd",
    "check_solver": "rewardkit.testing.solver_contract",
    "check_backbone": "rewardkit.testing.backbone_contract",
    "build_tiny_clip": "rewardkit.testing.tiny_clip",
    "build_tiny_clip_tokenizer": "rewardkit.testing.tiny_clip",
    "build_tiny_aesthetic_head": "rewardkit.testing.tiny_clip",
}

__all__ = ["check_reward_model", *_LAZY]


def __getattr__(name: str) -> Any:
    """Import the lazily re-exported helpers on first use."""
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'rewardkit.testing' has no attribute '{name}'")
    return getattr(importlib.import_module(module_name), name)
