"""Data-parallel LCD on 2 CPU processes (gloo), and DeepSpeed ZeRO-2 in one process.

This file is also the worker script: ``python -m torch.distributed.run --nproc_per_node 2
tests/test_distributed_lcd.py OUT TEACHER DATA`` trains a few steps on each rank and writes what
the rank saw and the weights it ended with; the test then compares the ranks.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ACCELERATE_", "RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_"))}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
               **extra)
    return env


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline
    from rewardkit.testing.tiny_training import write_tiny_image_folder

    root = tmp_path_factory.mktemp("dist")
    return {"teacher": build_tiny_sd_pipeline(root / "teacher"),
            "data": write_tiny_image_folder(root / "data", count=8, size=16)}


# ------------------------------------------------------------------------------ the worker


def worker(out: str, teacher: str, data: str, steps: int, extra: dict) -> None:
    """Train ``steps`` steps and record this rank's data keys, world and final weights."""
    torch.set_num_threads(1)
    from rewardkit.recipes.lcd import LCDRecipe
    from rewardkit.testing.tiny_training import tiny_lcd_config

    class Recording(LCDRecipe):
        keys: list[str] = []

        def forward(self, batch):
            self.keys.extend(batch["keys"])
            return super().forward(batch)

    recipe = Recording(tiny_lcd_config(teacher, data, out, max_train_steps=steps, **extra))
    recipe.run(progress=False)
    acc = recipe.accelerator
    rank = acc.process_index
    torch.save({k: v.detach().cpu() for k, v in recipe.unwrapped_student.state_dict().items()},
               Path(out) / f"weights-{rank}.pt")
    (Path(out) / f"rank-{rank}.json").write_text(json.dumps({
        "process_index": rank, "num_processes": acc.num_processes,
        "distributed_type": str(acc.distributed_type), "keys": recipe.keys,
        "global_step": recipe.global_step,
        "zero_stage": getattr(recipe.student, "zero_optimization_stage", lambda: None)(),
        "optimizer": type(getattr(recipe.optimizer, "optimizer", recipe.optimizer)).__name__,
        "bucket_view": getattr(recipe.student, "gradient_as_bucket_view", None),
        "env_world_size": os.environ.get("WORLD_SIZE")}))


# ------------------------------------------------------------------------------ the tests


def load_rank(out: Path, rank: int) -> tuple[dict, dict[str, torch.Tensor]]:
    return (json.loads((out / f"rank-{rank}.json").read_text()),
            torch.load(out / f"weights-{rank}.pt", weights_only=True))


DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
ENGINES = {
    "ddp": ({}, "DistributedType.MULTI_CPU"),
    "deepspeed-zero2": ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"},
                        "DistributedType.DEEPSPEED"),
}


@pytest.mark.parametrize("engine", [
    "ddp", pytest.param("deepspeed-zero2", marks=pytest.mark.skipif(
        not DEEPSPEED, reason="deepspeed is not installed (pip install deepspeed)"))])
def test_two_processes_see_different_data_and_end_identical(engine, assets, tmp_path):
    """torchrun with 2 CPU processes: plain DDP (gloo) and DeepSpeed ZeRO-2, which accelerate
    started as two lone "rank 0" processes and DeepSpeed then refused (batch size check)."""
    env_extra, distributed_type = ENGINES[engine]
    out = tmp_path / "out"
    extra = {"checkpointing_steps": 2}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--standalone", __file__, str(out),
           str(assets["teacher"]), str(assets["data"]), "2", json.dumps(extra)]
    result = subprocess.run(cmd, cwd=REPO, env=child_env(**env_extra), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    info0, weights0 = load_rank(out, 0)
    info1, weights1 = load_rank(out, 1)
    # really two ranks of one data-parallel group (not two lone trainers)
    assert {info0["process_index"], info1["process_index"]} == {0, 1}
    assert info0["num_processes"] == info1["num_processes"] == 2
    assert info0["distributed_type"] == info1["distributed_type"] == distributed_type
    if engine == "deepspeed-zero2":
        assert info0["zero_stage"] == info1["zero_stage"] == 2
    else:  # gradients live in DDP's all-reduce buckets, not in a second copy
        assert info0["bucket_view"] is info1["bucket_view"] is True
    assert info0["global_step"] == info1["global_step"] == 2
    # different data on each replica ...
    assert len(info0["keys"]) == len(info1["keys"]) == 4
    assert not set(info0["keys"]) & set(info1["keys"])
    # ... identical weights afterwards (gradients were all-reduced), and they did train
    assert weights0.keys() == weights1.keys()
    for key in weights0:
        assert torch.equal(weights0[key], weights1[key]), key
    teacher = torch.load(out / "weights-0.pt", weights_only=True)  # same file, sanity of load
    from safetensors.torch import load_file

    initial = load_file(str(assets["teacher"] / "unet" / "diffusion_pytorch_model.safetensors"))
    assert any(not torch.equal(initial[k], teacher[k]) for k in initial if k in teacher)
    # the checkpoint holds both ranks' RNG and data positions
    checkpoint = out / "checkpoint-2"
    for rank in (0, 1):
        assert (checkpoint / f"rank_state_{rank}.json").is_file()
        assert (checkpoint / f"rank_state_{rank}.safetensors").is_file()
    assert json.loads((checkpoint / "trainer_state.json").read_text())["world_size"] == 2
    assert (out / "pipeline" / "model_index.json").is_file()


def deepspeed_env() -> dict[str, str]:
    return child_env(ACCELERATE_USE_DEEPSPEED="true", ACCELERATE_DEEPSPEED_ZERO_STAGE="2",
                     RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                     MASTER_PORT=str(free_port()))


@pytest.mark.skipif(not DEEPSPEED, reason="deepspeed is not installed (pip install deepspeed)")
def test_deepspeed_zero2_trains_checkpoints_and_resumes_in_one_process(assets, tmp_path):
    out = tmp_path / "ds"
    base = {"checkpointing_steps": 2}

    def launch(steps: int, extra: dict) -> subprocess.CompletedProcess:
        cmd = [sys.executable, __file__, str(out), str(assets["teacher"]), str(assets["data"]),
               str(steps), json.dumps({**base, **extra})]
        return subprocess.run(cmd, cwd=REPO, env=deepspeed_env(), capture_output=True, text=True,
                              timeout=300)

    first = launch(2, {})
    assert first.returncode == 0, first.stderr[-4000:]
    info, weights_2 = load_rank(out, 0)
    assert info["distributed_type"] == "DistributedType.DEEPSPEED"
    assert info["zero_stage"] == 2 and "Zero" in info["optimizer"], info
    checkpoint = out / "checkpoint-2"
    # DeepSpeed's own checkpoint layout (engine + ZeRO-2 optimiser shards) inside ours
    assert any(checkpoint.rglob("*optim_states.pt")), sorted(p.name for p in checkpoint.rglob("*"))
    assert (checkpoint / "target.safetensors").is_file()

    second = launch(3, {"resume_from_checkpoint": "latest"})
    assert second.returncode == 0, second.stderr[-4000:]
    assert "resumed from" in second.stdout + second.stderr
    info, weights_3 = load_rank(out, 0)
    assert info["global_step"] == 3 and len(info["keys"]) == 2  # only the one remaining step ran
    assert any(not torch.equal(weights_2[k], weights_3[k]) for k in weights_2)


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), json.loads(sys.argv[5]))


# ------------------------------------------------------------------------------ launchers


def test_requested_processes_reads_accelerate_launch_command_lines():
    from rewardkit.training.runtime import requested_processes

    assert requested_processes(["python", "/x/bin/accelerate", "launch", "--cpu",
                                "--num_processes", "2", "-m", "rewardkit"]) == 2
    assert requested_processes(["accelerate", "launch", "--num_processes=4", "t.py"]) == 4
    assert requested_processes(["torchrun", "--nproc_per_node", "2", "-m", "x"]) is None
    assert requested_processes(["python", "-m", "pytest", "--num_processes", "2"]) is None
    assert requested_processes([]) is None


def test_accelerate_launch_of_two_cpu_processes_that_starts_one_is_refused(assets, tmp_path):
    """accelerate 1.x runs `--num_processes 2` on a CPU machine as one process, silently."""
    accelerate = Path(sys.executable).with_name("accelerate")
    if not accelerate.exists():
        pytest.skip("the accelerate console script is not installed beside this python")
    out = tmp_path / "out"
    result = subprocess.run(
        [str(accelerate), "launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "rewardkit", "run", "lcd",
         "--pretrained_teacher_model", str(assets["teacher"]),
         "--train_shards_path_or_url", str(assets["data"]), "--output_dir", str(out),
         "--resolution", "16", "--train_batch_size", "2", "--max_train_steps", "1",
         "--report_to", "none", "--unet_time_cond_proj_dim", "32", "--validation_steps", "0"],
        capture_output=True, text=True, env=child_env(), timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "asked for 2 processes but started one" in result.stderr
    assert "torchrun --nproc_per_node 2" in result.stderr
    assert not (out / "config.json").exists()


# ------------------------------------------------------------------------------ engines refused


@pytest.mark.parametrize("env, match", [
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"},
     "DeepSpeed ZeRO stage 3 is not supported"),
    ({"ACCELERATE_USE_FSDP": "true"}, "FSDP is not supported"),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": "{ds3}"},
     "DeepSpeed ZeRO stage 3 is not supported"),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": "{bad}"},
     "cannot be read as JSON"),
])
def test_engines_that_shard_parameters_are_refused_before_anything_loads(env, match, assets, tmp_path,
                                                                         monkeypatch):
    import rewardkit as rk
    from rewardkit.errors import ConfigError
    from rewardkit.recipes.lcd import LCDRecipe

    (tmp_path / "ds3.json").write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    (tmp_path / "bad.json").write_text("{not json")
    for key, value in env.items():
        monkeypatch.setenv(key, value.format(ds3=tmp_path / "ds3.json", bad=tmp_path / "bad.json"))

    def no_loading(*args, **kwargs):  # pragma: no cover - reaching it is the failure
        raise AssertionError("a model was loaded before the engine was checked")

    monkeypatch.setattr(LCDRecipe, "build_backbone", no_loading)
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=match):
        rk.recipe("lcd", pretrained_teacher_model=str(assets["teacher"]),
                  train_shards_path_or_url=str(assets["data"]), output_dir=str(out)).run(progress=False)
    assert not out.exists()


def test_a_plain_cpu_run_prints_no_deepspeed_warning(assets, tmp_path):
    """transformers' save_pretrained imports DeepSpeed (installed, unused), whose accelerator
    auto-detection warned "Setting accelerator to CPU" in every run."""
    env = {k: v for k, v in child_env().items() if k != "DS_ACCELERATOR"}
    result = subprocess.run(
        [sys.executable, "-m", "rewardkit", "run", "lcd",
         "--pretrained_teacher_model", str(assets["teacher"]),
         "--train_shards_path_or_url", str(assets["data"]), "--output_dir", str(tmp_path / "out"),
         "--resolution", "16", "--train_batch_size", "2", "--max_train_steps", "1",
         "--report_to", "none", "--unet_time_cond_proj_dim", "32", "--validation_steps", "0"],
        capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "pipeline" / "model_index.json").is_file()
    assert "Setting accelerator to CPU" not in result.stdout + result.stderr
