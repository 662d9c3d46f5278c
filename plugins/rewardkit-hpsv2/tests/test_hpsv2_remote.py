"""Two virtual environments, one run: `hpsv2` served from this venv (the plugins' one, whose
torchvision does not import beside the core's torch), and `rg-lcd` training in the main venv
against it as `remote`, through the LRM.

The main venv's interpreter is ``$REWARDKIT_MAIN_PYTHON``, else ``.venv/bin/python`` of the
checkout (what ``make test`` builds before ``make test-plugins`` runs this).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import rewardkit as rk
from rewardkit.testing.reward_server import RewardServer
from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline
from rewardkit.testing.tiny_training import tiny_lcd_config, write_tiny_image_folder
from rewardkit_hpsv2.testing import build_tiny_hps_checkpoint

ROOT = Path(__file__).resolve().parents[3]
MAIN_PYTHON = Path(os.environ.get("REWARDKIT_MAIN_PYTHON", ROOT / ".venv" / "bin" / "python"))
PROMPTS = ["a red cube on a table", "two cats under a blue sky", "a lighthouse at night"]

#: Run in the main venv: score fixed images through the server, print the scores as JSON.
SCORE_REMOTELY = """
import json, sys
import numpy as np, torch
import rewardkit as rk
images = np.random.RandomState(0).rand(3, 3, 24, 24).astype(np.float32)
rm = rk.reward_model("remote", url=sys.argv[1])
print(json.dumps({"torch": torch.__version__,
                  "scores": rm(torch.from_numpy(images), json.loads(sys.argv[2])).tolist()}))
"""


def main_venv(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # its own site-packages: its torch
    return subprocess.run([str(MAIN_PYTHON), *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    if not MAIN_PYTHON.is_file():
        pytest.skip(f"no main venv at {MAIN_PYTHON} (make test builds it; or set "
                    "REWARDKIT_MAIN_PYTHON)")
    root = tmp_path_factory.mktemp("two-venvs")
    checkpoint, config = build_tiny_hps_checkpoint(root / "hps")
    params = {"checkpoint": str(checkpoint), "model_config": str(config)}
    with RewardServer("hpsv2", params, args=["--access-log"]) as server:
        yield {"server": server, "params": params, "root": root}


def test_the_main_venv_gets_this_venvs_hpsv2_scores_exactly(served):
    done = main_venv("-c", SCORE_REMOTELY, served["server"].url, json.dumps(PROMPTS),
                     cwd=served["root"])
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["torch"] != torch.__version__  # two torches: two venvs indeed
    images = torch.from_numpy(np.random.RandomState(0).rand(3, 3, 24, 24).astype(np.float32))
    expected = rk.reward_model("hpsv2", **served["params"])(images, PROMPTS)
    assert answer["scores"] == expected.tolist()  # float32 pixels cross bit for bit


def test_rg_lcd_in_the_main_venv_trains_against_hpsv2_served_from_this_one(served):
    root, url = served["root"], served["server"].url
    teacher = build_tiny_sd_pipeline(root / "teacher")
    data = write_tiny_image_folder(root / "data", count=8, size=16)
    config = dataclasses.asdict(tiny_lcd_config(teacher, data, root / "run", max_train_steps=2))
    config.update(reward="remote", reward_params={"url": url}, proxy="lrm",
                  proxy_params={"embed_dim": 16, "image_widths": [8, 16], "text_width": 16,
                                "text_heads": 2},
                  proxy_batch_size=2, vae_decode_batch_size=4, proxy_eval_num_prompts=0)
    (root / "config.json").write_text(json.dumps(config))
    before = served["server"].output().count("POST /score")
    done = main_venv("-m", "rewardkit", "run", "rg-lcd", "--config", str(root / "config.json"),
                     cwd=root)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    rows = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["expert_reward"] for r in rows if "expert_reward" in r]
    assert len(rewards) == 2 and all(np.isfinite(rewards))
    assert served["server"].output().count("POST /score") > before  # judged over there
    assert (root / "run" / "proxy" / "proxy.safetensors").is_file()
