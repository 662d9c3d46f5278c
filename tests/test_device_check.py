"""``benchmarks/device_check.py --scale tiny``: the GPU check's every stage runs on a CPU, a stage
that fails is recorded without stopping the others, and the results file is written as it goes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("env", "build-sd21", "sd21-lcd", "sd21-rg-lcd-direct", "sd21-max-batch",
          "sd21-rg-lcd-lrm", "rm-dtype", "build-sdxl", "sdxl-lcd", "sdxl-lora")


def device_check(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "device_check.py"),
                           "--scale", "tiny", "--device", "cpu", "--out", str(out),
                           "--models", str(tmp_path / "models"), *args],
                          capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads(out.read_text())


def test_every_stage_runs_at_tiny_scale(tmp_path):
    result = device_check(tmp_path, "--in-process")
    stages = result["stages"]
    assert tuple(stages) == STAGES
    failed = {name: stage.get("error") for name, stage in stages.items() if not stage.get("ok")}
    assert not failed, failed
    lcd = stages["sd21-lcd"]
    assert lcd["alternating"]["ratio_rewardkit_over_diffusers"] > 0
    assert lcd["rewardkit_host_syncs"]["count"] == 1  # the step's one deferred read
    assert lcd["rewardkit_mfu"]["tflop_per_step"] > 0
    assert stages["sd21-max-batch"]["max_batch_checkpointed"]["largest_batch"] == 4  # the cap
    direct = stages["sd21-rg-lcd-direct"]["rows"]
    assert set(direct) == {f"batch{b}_decoder_ckpt_{s}" for b in (1, 2) for s in ("on", "off")}
    assert all(row["s_per_step"] > 0 for row in direct.values())
    rm = stages["rm-dtype"]
    assert rm["bfloat16"]["max_abs_score_difference_vs_fp32"] < 0.05
    assert stages["build-sdxl"]["sdxl_parameters"]["text_encoder_2"] > 0
    assert stages["sdxl-lora"]["step"]["s_per_step"] > 0


def test_a_failing_stage_is_recorded_and_the_others_still_run(tmp_path):
    # sd21-lcd without build-sd21 finds no models: it fails, env (its own process) still runs
    result = device_check(tmp_path, "--stages", "sd21-lcd,env")
    assert not result["stages"]["sd21-lcd"]["ok"]
    assert "sd21" in result["stages"]["sd21-lcd"]["error"]
    assert result["stages"]["env"]["ok"] and result["stages"]["env"]["matmul_bf16_tflops"] >= 0


def test_stages_that_cannot_start_in_time_are_skipped(tmp_path):
    result = device_check(tmp_path, "--stages", "env,build-sd21", "--budget", "0")
    assert {s["error"] for s in result["stages"].values()} == {"skipped: out of time"}


def test_full_size_architectures_have_the_published_parameter_counts():
    from rewardkit.testing.architectures import parameter_counts

    assert parameter_counts("sd21")["unet"] == 865_910_724  # stabilityai/stable-diffusion-2-1
    sdxl = parameter_counts("sdxl")
    assert sdxl["unet"] == 2_567_463_684 and sdxl["vae"] == 83_653_863
    assert sdxl["text_encoder"] == 123_060_480  # CLIP ViT-L/14's text tower
