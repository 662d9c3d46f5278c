"""The memory plan (``rewardkit run ... --plan``): checked against the peak of real training steps
on tiny models, and its parts against independent figures."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rewardkit as rk
from rewardkit.cli import run as cli_run
from rewardkit.errors import ConfigError
from rewardkit.plan import GiB, Launch, Profiles, parse_memory, plan_config, plan_file
from rewardkit.testing.memory import peak_bytes
from rewardkit.testing.tiny_clip import build_tiny_clip
from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline
from rewardkit.testing.tiny_sdxl import build_tiny_sdxl_pipeline
from rewardkit.testing.tiny_training import write_tiny_image_folder

ROOT = Path(__file__).resolve().parents[1]
#: Resolution 48 (24x24 latents) and batch 3: neither is a size the profiles were measured at
#: (latent sides 16 and 32, batches 2 and 4), so the plan's scaling is part of what is checked.
RESOLUTION, BATCH = 48, 3
SMALL_LRM = {"image_widths": [16, 32], "text_width": 32, "embed_dim": 32}
LRM = dict(proxy="lrm", proxy_params=SMALL_LRM, proxy_batch_size=2, vae_decode_batch_size=4,
           proxy_eval_num_prompts=0)
CASES = {
    "lcd-bf16": ("lcd", "sd", dict(mixed_precision="bf16")),
    "rg-lcd-direct-bf16": ("rg-lcd", "sd", dict(mixed_precision="bf16", proxy="none")),
    "rg-lcd-lrm": ("rg-lcd", "sd", dict(LRM)),
    "lcd-lora": ("lcd", "sd", dict(use_lora=True, lora_rank=4)),
    "sdxl-rg-lcd-direct-decoder-ckpt": ("rg-lcd", "sdxl", dict(
        mixed_precision="bf16", proxy="none", vae_gradient_checkpointing=True)),
    "sdxl-rg-lcd-lrm-lora-ckpt": ("rg-lcd", "sdxl", dict(
        LRM, use_lora=True, lora_rank=4, gradient_checkpointing=True)),
}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("plan")
    return {"sd": build_tiny_sd_pipeline(root / "sd"), "sdxl": build_tiny_sdxl_pipeline(root / "xl"),
            "clip": build_tiny_clip(root / "clip"),
            "data": write_tiny_image_folder(root / "data", count=6, size=RESOLUTION)}


@pytest.fixture(scope="module")
def profiles():
    """Profiles measured for the tiny models (none is in the shipped table), shared by the cases."""
    return Profiles(table={})


def values(assets, out, recipe: str, teacher: str, extra: dict) -> dict:
    base = dict(pretrained_teacher_model=str(assets[teacher]),
                train_shards_path_or_url=str(assets["data"]), output_dir=str(out),
                resolution=RESOLUTION, train_batch_size=BATCH, max_train_steps=5,
                learning_rate=1e-4, unet_time_cond_proj_dim=32, checkpointing_steps=0,
                validation_steps=0, seed=0, report_to="none")
    if teacher == "sdxl":
        base["backbone"] = "stable-diffusion-xl"
    if recipe == "rg-lcd":
        base.update(reward="clip-score", reward_params={"model": str(assets["clip"])})
    return {**base, **extra}


#: Set in the fresh process that runs the real-step cases (see the test after them).
ISOLATED = "REWARDKIT_PLAN_VALIDATION_PROCESS"


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_the_plan_is_within_15_percent_of_a_real_steps_peak(assets, profiles, tmp_path, case):
    if not os.environ.get(ISOLATED):
        pytest.skip("run in a fresh process by test_the_real_step_cases_pass_in_a_fresh_process")
    recipe_name, teacher, extra = CASES[case]
    recipe = rk.recipe(recipe_name, values(assets, tmp_path / "out", recipe_name, teacher, extra))
    recipe.setup()
    recipe.train_step()  # the optimiser's states exist from here on, as the plan counts them
    measured = peak_bytes(recipe.train_step)
    plan = plan_config(recipe.config, Launch(num_processes=1, device="cpu"), profiles)
    error = (plan.total - measured) / measured
    assert abs(error) <= 0.15, (case, plan.total, measured)


@pytest.mark.slow
def test_the_real_step_cases_pass_in_a_fresh_process():
    """The real-step measure counts every live tensor of the process and runs models under fake
    tensors: in a test worker, objects and torch state other tests leave behind (compiled
    modules, dynamic-shape guards) would leak into it. So the cases run in a process of their
    own, and must all pass there."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"{__file__}::test_the_plan_is_within_15_percent_of_a_real_steps_peak"],
        env={**os.environ, ISOLATED: "1"}, capture_output=True, text=True, timeout=1200,
        cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert f"{len(CASES)} passed" in done.stdout, done.stdout[-2000:]


def test_fake_tensor_profiles_equal_real_ones():
    """The method's premise: a profile measured under fake tensors (no memory, no arithmetic,
    how the shipped table was made) is the one real CPU tensors give."""
    from rewardkit.plan.modules import ModelSpec
    from rewardkit.plan.profiles import measure
    from rewardkit.plan.runs import Precision, unet_run

    spec = ModelSpec("unet", dict(
        in_channels=4, out_channels=4, down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], block_out_channels=[32, 64],
        layers_per_block=1, attention_head_dim=8, cross_attention_dim=32, norm_num_groups=32))
    run = unet_run(spec, Precision(torch.float32, torch.bfloat16), trained=True,
                   time_cond_proj_dim=32)
    fake, real = measure(run, 8, fake=True), measure(run, 8, fake=False)
    for batch, side in ((1, 8), (3, 12), (8, 32)):
        for gradients in (False, True):
            assert fake.peak_bytes(batch, side, gradients) == pytest.approx(
                real.peak_bytes(batch, side, gradients), rel=0.01)
        assert fake.kept_bytes(batch, side) == pytest.approx(real.kept_bytes(batch, side),
                                                             rel=0.01)


def test_parameter_counts_of_the_shipped_configs_are_the_published_ones():
    """SD 2.1's UNet has 865,910,724 parameters and SDXL's 2,567,463,684 (as diffusers counts
    the hub checkpoints); the plan counts them on the meta device from the shipped configs."""
    from rewardkit.plan.modules import parameter_count
    from rewardkit.plan.sources import pipeline_specs

    assert parameter_count(pipeline_specs(
        "k", "stabilityai/stable-diffusion-2-1", xl=False)["unet"]) == 865_910_724
    assert parameter_count(pipeline_specs(
        "k", "stabilityai/stable-diffusion-xl-base-1.0", xl=True)["unet"]) == 2_567_463_684


EXAMPLES = sorted((ROOT / "examples" / "configs").glob("*.toml"))
FIGURE = re.compile(r"--plan --num_processes (\d+) --gpu_memory (\d+)GiB`[^:]*: ([0-9.]+) GiB of "
                    r"tensors per GPU .*?, ([0-9.]+) GiB with the CUDA context and allocator slack: "
                    r"(fits|does not fit) (\d+) GiB")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_configs_carry_the_plans_figures(path):
    """Each example says its plan in a comment, and the shipped table covers it: the figures
    come back without measuring anything, in a few seconds."""
    if 'backbone = "stable-diffusion-3"' in path.read_text():
        # the plan covers UNet backbones only; an SD3 config gets its one sentence
        with pytest.raises(ConfigError, match="not the 'stable-diffusion-3' backbone"):
            plan_file(path, num_processes=1, profiles=Profiles(measure_missing=False))
        return
    comment = " ".join(line.lstrip("#").strip() for line in path.read_text().splitlines()
                       if line.startswith("#"))
    found = FIGURE.search(comment)
    assert found, f"{path.name} has no memory plan comment"
    processes, memory, total, needed, verdict, _ = found.groups()
    plan = plan_file(path, num_processes=int(processes), profiles=Profiles(measure_missing=False))
    assert plan.total / GiB == pytest.approx(float(total), abs=0.051)
    assert plan.needed() / GiB == pytest.approx(float(needed), abs=0.051)
    assert plan.fits(int(memory) * GiB) == (verdict == "fits")


def test_gpu_memory_sizes():
    assert parse_memory("80GiB") == 80 * 2 ** 30
    assert parse_memory("80GB") == 80e9
    assert parse_memory("24G") == parse_memory("24") == 24 * 2 ** 30
    assert parse_memory("81920MiB") == 80 * 2 ** 30
    with pytest.raises(ConfigError, match="--gpu_memory: 'lots' is not a memory size"):
        parse_memory("lots")


def tiny_config_file(assets, tmp_path) -> Path:
    path = tmp_path / "lcd.json"
    path.write_text(json.dumps(values(assets, tmp_path / "out", "lcd", "sd", {})))
    return path


def test_run_plan_prints_the_plan_and_what_would_fit(assets, profiles, tmp_path, capsys,
                                                     monkeypatch):
    config = tiny_config_file(assets, tmp_path)
    plan_file(config, profiles=profiles)  # the tiny models' profiles, measured once
    monkeypatch.setattr("rewardkit.plan.table.shipped_table", profiles.as_table)
    assert cli_run(["run", "lcd", "--config", str(config), "--plan", "--gpu_memory", "2GiB"]) == 0
    out = capsys.readouterr().out
    assert "memory plan per GPU: lcd" in out and "fits 2.00 GiB" in out
    assert "student UNet weights (trained)" in out and "EMA target UNet (fp32)" in out
    assert cli_run(["run", "lcd", "--config", str(config), "--plan", "--gpu_memory", "1MiB",
                    "--train_batch_size", "64"]) == 0
    out = capsys.readouterr().out
    assert "does not fit" in out and "student gradient checkpointing" in out
    assert not (tmp_path / "out").exists()  # nothing ran


def test_plan_options_need_plan_and_other_recipes_are_refused(assets, tmp_path, capsys):
    config = tiny_config_file(assets, tmp_path)
    assert cli_run(["run", "lcd", "--config", str(config), "--gpu_memory", "80GiB"]) == 2
    capsys.readouterr()
    with pytest.raises(ConfigError, match="covers only the lcd and rg-lcd recipes .* not the "
                                          "'grpo' recipe; to size this run, train it for a few"):
        plan_file(ROOT / "examples" / "configs" / "grpo" / "sd21-pickscore.toml", "grpo")


@pytest.mark.parametrize("argv, what", [
    (["draft"], "the 'draft' recipe"),  # its embedded defaults would train a student first
    (["grpo", "--config", str(ROOT / "examples/configs/grpo/sdxl-lora-hpsv21.toml")],
     "the 'grpo' recipe"),
    (["lrm-pretrain"], "the 'lrm-pretrain' recipe"),
    (["rg-lcd", "--config", str(ROOT / "examples/configs/sd35m-hpsv21-lrm.toml")],
     "the 'stable-diffusion-3' backbone"),
    (["rg-lcd", "--backbone", "stable-diffusion-3", "--gpu_memory", "80GiB"],
     "the 'stable-diffusion-3' backbone"),
], ids=["draft", "grpo", "lrm-pretrain", "sd3-config", "sd3-override"])
def test_run_plan_refuses_what_it_does_not_cover_in_one_sentence(argv, what, tmp_path, capsys,
                                                                 monkeypatch):
    """No plan table, no traceback, nothing loaded or trained: one sentence naming what is not
    covered and how to size the run instead."""
    from rewardkit.recipes import presets

    real = presets.preset_defaults

    def guarded(recipe, chosen=None):
        assert recipe == "rg-lcd", f"the plan resolved {recipe}'s preset (it trains) before refusing"
        return real(recipe, chosen)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(presets, "preset_defaults", guarded)
    assert cli_run(["run", *argv, "--plan"]) == 1
    captured = capsys.readouterr()
    out = captured.out + captured.err
    message = " ".join(out.split())
    assert f"covers only the lcd and rg-lcd recipes on the stable-diffusion and " \
           f"stable-diffusion-xl backbones, not {what}; to size this run, train it for a few " \
           f"steps on the GPU (--max_train_steps 5) and read its peak memory in nvidia-smi" in message
    assert "Traceback" not in out and "memory plan per GPU" not in out and "GiB" not in out
    assert message.count(". ") == 0 and message.count("; ") == 1  # one sentence
    assert list(tmp_path.iterdir()) == []  # nothing ran


def test_an_unknown_hub_teacher_is_refused_naming_the_key(assets, tmp_path):
    with pytest.raises(ConfigError, match="pretrained_teacher_model: no config of 'someone/"
                                          "unknown-model' is readable here"):
        plan_file(tiny_config_file(assets, tmp_path), overrides={
            "pretrained_teacher_model": "someone/unknown-model"})
