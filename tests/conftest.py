"""Shared fixtures: a fresh plugin host per test that needs one, and thread limits."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def fresh_host(monkeypatch):
    """Reset the process-wide plugin host before and after the test (env vars take effect)."""
    from rewardkit.plugins import reset_host

    reset_host()
    yield
    reset_host()
