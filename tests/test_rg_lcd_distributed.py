"""rg-lcd's LRM under 2 gloo processes: one LRM, identical on every rank, trained on all ranks' data.

This file is also the worker script (``python -m torch.distributed.run --nproc_per_node 2
tests/test_rg_lcd_distributed.py OUT TEACHER DATA``).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SMALL_LRM = dict(embed_dim=16, image_widths=[8, 16], text_width=16, text_heads=2)


def worker(out: str, teacher: str, data: str) -> None:
    """Train 2 LRM-mode steps without a seed; save this rank's initial and final LRM."""
    torch.set_num_threads(1)
    from rewardkit.recipes.rg_lcd import RGLCDConfig, RGLCDRecipe
    from rewardkit.testing.tiny_training import tiny_lcd_config

    base = dataclasses.asdict(tiny_lcd_config(teacher, data, out, max_train_steps=2))
    config = RGLCDConfig(**{**base, "seed": None, "reward": "jpeg-compressibility",
                            "proxy_params": SMALL_LRM, "proxy_batch_size": 2, "proxy_lr": 1e-2})
    recipe = RGLCDRecipe(config)
    recipe.setup()
    rank = recipe.accelerator.process_index
    initial = {k: v.clone() for k, v in recipe.proxy_model.state_dict().items()}
    recipe.run(progress=False)
    torch.save({"initial": initial, "final": recipe.proxy_model.state_dict(),
                "world": recipe.accelerator.num_processes}, Path(out) / f"lrm-{rank}.pt")


def test_two_processes_keep_one_identical_lrm(tmp_path):
    from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline
    from rewardkit.testing.tiny_training import write_tiny_image_folder

    teacher = build_tiny_sd_pipeline(tmp_path / "teacher")
    data = write_tiny_image_folder(tmp_path / "data", count=8, size=16)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ACCELERATE_", "RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_"))}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--standalone", __file__, str(out),
           str(teacher), str(data)]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    rank0, rank1 = (torch.load(out / f"lrm-{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0["world"] == rank1["world"] == 2
    for key in rank0["final"]:
        assert torch.equal(rank0["initial"][key], rank1["initial"][key]), key  # broadcast
        assert torch.equal(rank0["final"][key], rank1["final"][key]), key  # averaged grads
    assert any(not torch.equal(rank0["initial"][k], rank0["final"][k]) for k in rank0["final"])
    assert (out / "proxy" / "proxy.safetensors").is_file()


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2], sys.argv[3])
