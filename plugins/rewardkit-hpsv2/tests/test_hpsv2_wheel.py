"""The plugin as users install it: its wheel, installed with --no-deps into an empty folder
(a file the wheel leaves out is invisible to tests that import the source tree)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rewardkit.testing.wheel import build_wheel, install_wheel, missing_from_wheel, run_from

PROJECT = Path(__file__).resolve().parents[1]

FROM_THE_WHEEL = r'''
from pathlib import Path
import torch
import rewardkit as rk
import rewardkit_hpsv2
from rewardkit_hpsv2.testing import build_tiny_hps_checkpoint

assert Path(rewardkit_hpsv2.__file__).resolve().is_relative_to(Path.cwd()), rewardkit_hpsv2.__file__
checkpoint, config = build_tiny_hps_checkpoint(Path("tiny"))
rm = rk.reward_model("hpsv2", checkpoint=str(checkpoint), model_config=str(config))
scores = rm(torch.rand(2, 3, 48, 48), ["a red cube", "two dogs"])
assert scores.shape == (2,) and torch.isfinite(scores).all(), scores
print("ok", type(rm).__module__)
'''


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(PROJECT, tmp_path_factory.mktemp("dist"))


def test_the_wheel_holds_every_tracked_package_file(wheel):
    assert missing_from_wheel(wheel, PROJECT, "rewardkit_hpsv2") == []


def test_the_installed_wheel_registers_and_scores(wheel, tmp_path):
    site = install_wheel(wheel, tmp_path / "site")
    result = run_from(site, FROM_THE_WHEEL)
    assert "ok rewardkit_hpsv2." in result.stdout
