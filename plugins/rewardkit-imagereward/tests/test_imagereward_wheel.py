"""The plugin as users install it: its wheel, installed with --no-deps into an empty folder.

The source tree cannot show a file the wheel leaves out: ``med_config.json`` (read whenever a
checkpoint comes without its own, as the published ``ImageReward-v1.0`` does) was missing from
both git and the wheel, and every source-tree test still passed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rewardkit.testing.wheel import build_wheel, install_wheel, missing_from_wheel, run_from

PROJECT = Path(__file__).resolve().parents[1]

FROM_THE_WHEEL = r'''
from pathlib import Path
import torch
import rewardkit as rk
import rewardkit_imagereward
from rewardkit_imagereward.loading import resolve_text_config
from rewardkit_imagereward.configs import VisionConfig
from rewardkit_imagereward.model import ImageRewardModel
from rewardkit_imagereward.testing import build_tiny_imagereward

assert Path(rewardkit_imagereward.__file__).resolve().is_relative_to(Path.cwd()), rewardkit_imagereward.__file__

# a checkpoint folder without med_config.json: the packaged BERT-base ("MED") config is used
bare = Path("bare"); bare.mkdir()
text = resolve_text_config(None, bare)
assert (text.vocab_size, text.hidden_size, text.num_hidden_layers) == (30524, 768, 12), text
with torch.device("meta"):
    model = ImageRewardModel(VisionConfig(), text)
key = model.state_dict()["blip.text_encoder.encoder.layer.0.crossattention.self.key.weight"]
assert tuple(key.shape) == (768, 1024), key.shape  # BERT-base cross-attending ViT-L/16

# the entry point of the installed copy builds and scores a (tiny) model
folder = build_tiny_imagereward(Path("tiny"))
rm = rk.reward_model("imagereward", checkpoint=str(folder), output="raw")
scores = rm(torch.rand(2, 3, 48, 48), ["a red cube", "two dogs"])
assert scores.shape == (2,) and torch.isfinite(scores).all(), scores
print("ok", type(rm).__module__)
'''


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(PROJECT, tmp_path_factory.mktemp("dist"))


def test_the_wheel_holds_every_tracked_package_file(wheel):
    assert missing_from_wheel(wheel, PROJECT, "rewardkit_imagereward") == []


def test_the_installed_wheel_loads_the_packaged_config_and_scores(wheel, tmp_path):
    site = install_wheel(wheel, tmp_path / "site")
    assert (site / "rewardkit_imagereward" / "med_config.json").is_file()
    result = run_from(site, FROM_THE_WHEEL)
    assert "ok rewardkit_imagereward.reward" in result.stdout
