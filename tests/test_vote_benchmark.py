"""``benchmarks/vote_world.py`` still runs the whole flow (at toy size): a study sampled ahead,
simulated raters, the report, the export and an LRM trained on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_whole_flow_runs_on_the_world(tmp_path):
    from rewardkit.backbones.stable_diffusion import StableDiffusionBackbone
    from rewardkit.world.assets import TEACHER, asset_path

    backbone = StableDiffusionBackbone(str(asset_path(TEACHER)))
    student = backbone.save_pipeline(backbone.build_student(), tmp_path / "student" / "pipeline")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "vote_world.py"), "--quick",
                           "--student", str(student), "--teacher-steps", "4", "--output",
                           str(tmp_path / "out"), "--json", str(tmp_path / "r.json")],
                          capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["study"] == "student (2 steps) vs teacher (4 steps)"
    assert result["votes"] == 8 * 2 and 0.0 <= result["win_rate_of_student"]["win_rate"] <= 1.0
    assert set(result["rm_agreement"]) == {"world-judge", "world-scorer"}
    lrm = result["lrm_from_votes"]
    assert lrm["train_pairs"] + lrm["heldout_pairs"] <= 8
    assert 0.0 <= lrm["tuned_lrm_heldout_accuracy"] <= 1.0
    assert "$ rewardkit vote simulate" in done.stdout
    assert (tmp_path / "out" / "report.md").is_file()
