"""DeepSpeed ZeRO-2 with ``mixed_precision=bf16`` on CPU, in 1 and 2 processes (gloo).

Under DeepSpeed accelerate leaves autocast off and the engine trains a bf16 copy of the student
(its optimiser keeps the fp32 master weights), so the step has to run its UNets under its own
autocast and the EMA target has to average the fp32 masters. Checked here for ``lcd`` and both
``rg-lcd`` modes (direct, with a differentiable RM; LRM): every run trains, checkpoints, and a
run interrupted after step 3 and resumed from ``checkpoint-2`` logs steps 3-4 and ends with the
weights of an uninterrupted run, bit for bit.

This file is also the worker script: ``python tests/test_deepspeed_bf16.py OUT TEACHER DATA``
(under torchrun for 2 processes) runs every variant in one process group, one launch for all of
them, and writes what each rank ended with to ``OUT/<variant>/result-<rank>.pt``.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_distributed_lcd import REPO, child_env, free_port

pytestmark = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                reason="deepspeed is not installed (pip install deepspeed)")

SMALL_LRM = dict(embed_dim=16, image_widths=[8, 16], text_width=16, text_heads=2)
VARIANTS = {
    "lcd": ("lcd", {}),
    "rg-lcd-direct": ("rg-lcd", {"proxy": "none"}),
    "rg-lcd-lrm": ("rg-lcd", {"proxy": "lrm", "proxy_params": SMALL_LRM,
                              "proxy_eval_num_prompts": 0, "proxy_lr": 1e-3}),
}
STEPS, CHECKPOINT, CRASH = 4, 2, 3
EMA_DECAY = 0.9


# ------------------------------------------------------------------------------ the worker


def redness():
    """A differentiable expert without weights: red minus the other channels."""
    from rewardkit.rewards.base import RewardModel

    class Redness(RewardModel):
        name = "ds-redness"
        differentiable = True

        def score(self, images, prompts):
            channels = images.mean((2, 3))
            return channels[:, 0] - 0.5 * (channels[:, 1] + channels[:, 2])

    return Redness()


def masters(recipe) -> dict[str, torch.Tensor]:
    """The student's fp32 master weights, assembled by DeepSpeed (a collective: every rank)."""
    from deepspeed.utils import safe_get_full_fp32_param

    return {name: safe_get_full_fp32_param(param).detach().cpu().clone()
            for name, param in recipe.unwrapped_student.named_parameters()}


def snapshot(recipe) -> dict[str, dict[str, torch.Tensor]]:
    state = {"masters": masters(recipe),
             "student": {k: v.detach().cpu().clone()
                         for k, v in recipe.unwrapped_student.state_dict().items()},
             "target": {k: v.detach().cpu().clone() for k, v in recipe.target.state_dict().items()}}
    if getattr(recipe, "proxy_model", None) is not None:
        state["proxy"] = {k: v.detach().cpu().clone()
                          for k, v in recipe.proxy_model.state_dict().items()}
    return state


def run_variant(root: Path, teacher: str, data: str, name: str) -> dict:
    import rewardkit as rk

    recipe_name, extra = VARIANTS[name]
    base = dict(pretrained_teacher_model=teacher, train_shards_path_or_url=data, resolution=16,
                train_batch_size=2, max_train_steps=STEPS, learning_rate=1e-3,
                unet_time_cond_proj_dim=32, validation_steps=0, checkpointing_steps=CHECKPOINT,
                report_to="none", seed=0, mixed_precision="bf16", ema_decay=EMA_DECAY, **extra)
    if recipe_name == "rg-lcd":
        base.update(proxy_batch_size=2, vae_decode_batch_size=4)

    def build(folder: str, **more):
        built = {"reward": redness()} if recipe_name == "rg-lcd" else {}
        return rk.recipe(recipe_name, {**base, "output_dir": str(root / folder), **more}, **built)

    result: dict = {"per_step": []}

    # uninterrupted, recording after each step the target and the masters it should average
    straight = build("straight")
    after_step = straight.after_step

    def recording():
        metrics = after_step()  # the EMA update, then what it averaged and where it ended
        result["per_step"].append({"masters": masters(straight),
                                   "bf16": {k: v.detach().float().cpu().clone() for k, v in
                                            straight.unwrapped_student.named_parameters()},
                                   "target": {k: v.detach().cpu().clone() for k, v in
                                              straight.target.named_parameters()}})
        return metrics

    straight.after_step = recording
    result["initial_target"] = None
    setup = straight.setup

    def keep_initial_target():
        setup()
        result["initial_target"] = {k: v.detach().cpu().clone()
                                    for k, v in straight.target.named_parameters()}

    straight.setup = keep_initial_target
    straight.run(progress=False)
    result["straight"] = snapshot(straight)
    result["engine"] = {"dtype": str(next(straight.unwrapped_student.parameters()).dtype),
                        "zero_stage": straight.student.zero_optimization_stage(),
                        "num_processes": straight.accelerator.num_processes}

    # interrupted after the optimiser step of step 3, then resumed from checkpoint-2
    crashing = build("resumed")
    after = crashing.after_step

    def crash():
        if crashing.global_step + 1 == CRASH:
            raise KeyboardInterrupt("simulated interruption")
        return after()

    crashing.after_step = crash
    try:
        crashing.run(progress=False)
    except KeyboardInterrupt:
        pass
    resumed = build("resumed", resume_from_checkpoint="latest")
    resumed.run(progress=False)
    result["resumed"] = snapshot(resumed)
    result["resumed_from"] = resumed.accelerator.num_processes
    return result


def worker(out: str, teacher: str, data: str) -> None:
    torch.set_num_threads(1)
    from accelerate import Accelerator

    # run() ends with end_training, which destroys the process group; the variants share one
    # launch (one group) here, so it is destroyed once, at the end
    Accelerator.end_training = lambda self: [tracker.finish() for tracker in self.trackers]
    rank = 0
    for name in VARIANTS:
        result = run_variant(Path(out) / name, teacher, data, name)
        rank = int(torch.distributed.get_rank()) if torch.distributed.is_initialized() else 0
        torch.save(result, Path(out) / name / f"result-{rank}.pt")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2], sys.argv[3])


# ------------------------------------------------------------------------------ the tests


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline
    from rewardkit.testing.tiny_training import write_tiny_image_folder

    root = tmp_path_factory.mktemp("ds-bf16")
    return {"teacher": build_tiny_sd_pipeline(root / "teacher"),
            "data": write_tiny_image_folder(root / "data", count=8, size=16)}


@pytest.fixture(scope="module", params=[1, 2], ids=["1-process", "2-processes"])
def launched(request, assets, tmp_path_factory):
    """Every variant trained (straight, and interrupted + resumed) in one launch."""
    processes = request.param
    out = tmp_path_factory.mktemp(f"ds-bf16-{processes}")
    args = [str(Path(__file__).resolve()), str(out), str(assets["teacher"]), str(assets["data"])]
    env = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}
    if processes == 1:
        cmd = [sys.executable, *args]
        env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(free_port()))
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
               "--nproc_per_node", str(processes), "--standalone", *args]
    result = subprocess.run(cmd, cwd=REPO, env=child_env(**env), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return processes, out


def load(out: Path, name: str, rank: int) -> dict:
    return torch.load(out / name / f"result-{rank}.pt", weights_only=True)


def metric_rows(folder: Path) -> list[dict]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "step_time"} for row in rows if "step" in row]


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert a.keys() == b.keys(), what
    changed = [k for k in a if not torch.equal(a[k], b[k])]
    assert not changed, f"{what}: {len(changed)} tensors differ, e.g. {changed[:3]}"


@pytest.mark.parametrize("name", list(VARIANTS))
def test_bf16_zero2_trains_checkpoints_and_resumes_exactly(launched, name):
    processes, out = launched
    result = load(out, name, 0)
    assert result["engine"] == {"dtype": "torch.bfloat16", "zero_stage": 2,
                                "num_processes": processes}
    # checkpoints in DeepSpeed's layout (bf16 ZeRO shards) beside the fp32 target
    checkpoint = out / name / "straight" / f"checkpoint-{CHECKPOINT}"
    assert any(checkpoint.rglob("bf16_zero_pp_rank_*optim_states.pt")), sorted(
        p.name for p in checkpoint.rglob("*"))
    assert (checkpoint / "target.safetensors").is_file()
    assert (out / name / "straight" / "pipeline" / "model_index.json").is_file()

    # it trained: finite losses, weights moved
    straight_rows = metric_rows(out / name / "straight")
    assert [row["step"] for row in straight_rows] == list(range(1, STEPS + 1))
    assert all(torch.isfinite(torch.tensor(v)) for row in straight_rows for v in row.values())
    first = result["per_step"][0]["masters"]
    assert any(not torch.equal(first[k], result["straight"]["masters"][k]) for k in first)

    # the resumed run logged steps 3-4 as the uninterrupted one did and ends where it ends
    resumed_rows = metric_rows(out / name / "resumed")
    assert [r for r in resumed_rows if r["step"] > CHECKPOINT] == straight_rows[CHECKPOINT:]
    for part in result["straight"]:
        assert_same(result["straight"][part], result["resumed"][part], f"{name} {part}")

    # every rank ends with the same student, target and proxy
    for rank in range(1, processes):
        other = load(out, name, rank)
        for part in result["straight"]:
            assert_same(result["straight"][part], other["straight"][part], f"rank {rank} {part}")


def test_the_ema_target_averages_the_fp32_masters_not_the_bf16_copy(launched):
    """target_k = mu target_{k-1} + (1 - mu) master_k, recomputed here step by step."""
    _, out = launched
    result = load(out, "lcd", 0)
    target = result["initial_target"]
    # the engine's fp32 masters start as its bf16 copy, and so does the target
    for key, value in target.items():
        assert torch.equal(value, value.bfloat16().float()), key
    differs_from_bf16_average = False
    for k, step in enumerate(result["per_step"], 1):
        expected = {key: value.mul(EMA_DECAY).add(step["masters"][key], alpha=1 - EMA_DECAY)
                    for key, value in target.items()}
        assert_same(step["target"], expected, f"step {k}")
        rounded = {key: value.mul(EMA_DECAY).add(step["bf16"][key], alpha=1 - EMA_DECAY)
                   for key, value in target.items()}
        differs_from_bf16_average |= any(not torch.equal(expected[key], rounded[key])
                                         for key in expected)
        target = expected
    assert differs_from_bf16_average  # the masters really differ from the engine's bf16 copy
