"""`rewardkit eval --metrics ...,remote`: a served RM is a per-image metric like any other, with
the in-process RM's scores, and its token stays out of the report."""

from __future__ import annotations

import json
import sys

import pytest
from typer.testing import CliRunner

from rewardkit.cli import build_app
from rewardkit.testing.reward_server import RewardServer
from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline

TOKEN = "eval-token-9b2c44"


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    from rewardkit.backbones.stable_diffusion import StableDiffusionBackbone

    root = tmp_path_factory.mktemp("remote-eval")
    backbone = StableDiffusionBackbone(str(build_tiny_sd_pipeline(root / "teacher")))
    (root / "prompts.txt").write_text("a red circle\na blue square\n")
    return {"pipeline": backbone.save_pipeline(backbone.build_student(), root / "run" / "pipeline"),
            "prompts": root / "prompts.txt"}


def test_eval_scores_with_a_served_rm_as_in_process(student, tmp_path, monkeypatch):
    monkeypatch.delenv("REWARDKIT_REWARD_TOKEN", raising=False)
    with RewardServer("jpeg-compressibility", token=TOKEN) as server:
        args = ["eval", str(student["pipeline"]), "--prompts", str(student["prompts"]),
                "--steps", "1", "--metrics", "jpeg-compressibility,remote",
                "--metric-param", f"remote.url={server.url}",
                "--metric-param", f"remote.token={TOKEN}", "-k", "2", "-b", "4",
                "--device", "cpu", "-o", str(tmp_path)]
        monkeypatch.setattr(sys, "argv", ["rewardkit", *args])  # what the report records
        result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "results.json").read_text())
    row = results["rows"][0]
    assert row["remote"] == row["jpeg-compressibility"] < 0  # the same RM, exactly
    assert "remote.token=<redacted>" in results["command"]
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
