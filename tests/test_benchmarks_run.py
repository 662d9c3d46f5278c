"""The speed benchmarks still run (at toy sizes) and their correctness checks hold: a benchmark
that rots silently is a claim in the README that no command reproduces."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args: str, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args,
                           "--json", str(out)], capture_output=True, text=True, env=env,
                          timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("recipe", ["lcd", "rg-lcd"])
def test_bench_vs_diffusers_computes_the_peers_loss(tmp_path, recipe):
    result = run("bench_vs_diffusers.py", "--recipe", recipe, "--check", "--rounds", "1",
                 "--warmup", "0", "--latent", "8", "--batch", "2", "--threads", "1",
                 "--widths", "32,64", "--vae-widths", "32,64", out=tmp_path / "r.json")
    assert result["loss_abs_difference_fp32"] < 1e-6  # the same algorithm, the same loss
    assert result["rewardkit_s_per_step"] > 0 and result["diffusers_s_per_step"] > 0
    assert 0.0 <= result["profile_non_unet_share"] <= 1.0
