"""The example backbone plugin (``examples/backbone-plugin``), pip-installed like a user would."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import rewardkit as rk
from example_plugins import assert_own_tests_pass, load_only
from rewardkit import cli
from rewardkit.config import config_to_dict

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "backbone-plugin"


@pytest.fixture
def example_installed(example_backbone_site, on_sys_path, monkeypatch):
    """The example plugin importable and discoverable, and no other third-party plugin loaded."""
    return load_only(example_backbone_site, "rewardkit-example-backbone", on_sys_path, monkeypatch)


def test_rewardkit_lists_it_beside_the_builtins(example_installed, capsys):
    assert cli.run(["plugins", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    row = rows["rewardkit-example-backbone"]
    assert (row["version"], row["status"], row["builtin"]) == ("0.1.0", "ok", False)
    assert row["components"] == {"backbone": ["sd-taesd"]}
    assert cli.run(["list", "backbone", "--json"]) == 0
    names = {r["name"] for r in json.loads(capsys.readouterr().out)}
    assert names == {"stable-diffusion", "stable-diffusion-xl", "stable-diffusion-3", "sd-taesd"}


def test_rewardkit_run_lcd_trains_with_the_plugin_backbone(example_installed, tmp_path):
    from diffusers import AutoencoderTiny

    from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline
    from rewardkit.training.metrics import read_metrics
    from rewardkit.testing.tiny_training import tiny_lcd_config, write_tiny_image_folder

    teacher = build_tiny_sd_pipeline(tmp_path / "teacher")
    AutoencoderTiny(encoder_block_out_channels=(16, 16), decoder_block_out_channels=(16, 16),
                    num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1)).save_pretrained(
        tmp_path / "taesd")
    data = write_tiny_image_folder(tmp_path / "data", count=4, size=16)
    out = tmp_path / "out"
    config_file = tmp_path / "lcd.json"
    config_file.write_text(json.dumps(config_to_dict(
        tiny_lcd_config(teacher, data, out, max_train_steps=2)), default=str))
    assert cli.run(["run", "lcd", "--config", str(config_file), "--backbone", "sd-taesd",
                    "--backbone_params", json.dumps({"tiny_vae": str(tmp_path / "taesd")})]) == 0
    assert json.loads((out / "config.json").read_text())["backbone"] == "sd-taesd"
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and all(r["lcd_loss"] > 0 for r in rows)
    backbone = rk.backbone("sd-taesd", pretrained_model_name_or_path=str(teacher),
                           tiny_vae=str(tmp_path / "taesd"))
    assert str(example_installed) in sys.modules[type(backbone).__module__].__file__
    assert backbone.decode_latents(torch.zeros(1, 4, 8, 8)).shape == (1, 3, 16, 16)


def test_the_examples_own_tests_pass_against_the_installed_copy(example_installed):
    assert_own_tests_pass(EXAMPLE, example_installed)
