"""The command line prints no library warning a user can do nothing about, and filters only
there: ``import rewardkit`` leaves the libraries' logging alone."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

WARNING_WORDS = ("warning", "warn:", "deprecat", "requires torchvision", "setting accelerator")


def run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, env={**os.environ, "OMP_NUM_THREADS": "1", **env},
                          capture_output=True, text=True, timeout=300)


def test_rewardkit_list_prints_no_warning_lines(rewardkit_command):
    result = run([*rewardkit_command, "list"])
    assert result.returncode == 0, result.stderr
    assert "world-judge" in result.stdout
    assert result.stderr == ""
    noisy = [line for line in result.stdout.splitlines()
             if any(word in line.lower() for word in WARNING_WORDS)]
    assert not noisy


# What diffusers' pipeline modules do on import, and what printed transformers' warning on every
# command that loads a pipeline (sample, eval, run): ask transformers for CLIPImageProcessor.
TRIGGER = "import transformers; transformers.CLIPImageProcessor; transformers.SiglipImageProcessor"
MESSAGE = "requires torchvision (not installed)"


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None,
                    reason="with torchvision installed transformers has nothing to warn about")
def test_the_cli_drops_the_torchvision_fallback_warning_and_import_rewardkit_does_not():
    library = run([sys.executable, "-c", f"import rewardkit; {TRIGGER}"])
    assert library.returncode == 0, library.stderr
    assert library.stderr.count(MESSAGE) == 2, "the trigger no longer warns: update KNOWN_LIBRARY_NOISE"
    cli = ("from rewardkit import cli; cli.quiet_known_library_noise(); "
           f"cli.quiet_known_library_noise(); {TRIGGER}; import logging; "
           "logging.getLogger('transformers.utils.import_utils').warning('another message')")
    quiet = run([sys.executable, "-c", cli])
    assert quiet.returncode == 0, quiet.stderr
    assert MESSAGE not in quiet.stderr
    assert "another message" in quiet.stderr  # only the known message is dropped
