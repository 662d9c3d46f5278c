"""Helpers shared by the tests of the example plugins (``examples/*-plugin``), each pip-installed
into a temp folder by a session fixture of ``conftest.py``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def load_only(site: Path, distribution: str, on_sys_path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make the plugin installed in ``site`` importable and discoverable, with no other
    third-party plugin loaded (and wide CLI output); return ``site``."""
    on_sys_path(site)
    monkeypatch.setenv("REWARDKIT_LOAD_PLUGINS", distribution)
    monkeypatch.setenv("COLUMNS", "250")
    return site


def assert_own_tests_pass(example: Path, site: Path) -> None:
    """Run ``example/tests`` in a subprocess against the copy installed in ``site``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         str(example / "tests")], cwd=site, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
