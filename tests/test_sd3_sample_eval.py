"""`rewardkit sample` and `rewardkit eval` take an SD3 student and teacher: the flow pipeline
keeps its FlowMatch scheduler (what the student was distilled for), a folder saved without T5
loads, and the transformer's calls are counted like a UNet's."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import rewardkit as rk
from rewardkit.cli import build_app
from rewardkit.sampling import load_pipeline, sample_student
from rewardkit.testing.tiny_sd3 import build_tiny_sd3_pipeline
from rewardkit.testing.tiny_training import write_tiny_image_folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd3-eval")
    teacher = build_tiny_sd3_pipeline(root / "teacher", t5=False)
    data = write_tiny_image_folder(root / "data", count=4, size=16)
    out = rk.recipe("lcd", dict(
        pretrained_teacher_model=str(teacher), train_shards_path_or_url=str(data),
        backbone="stable-diffusion-3", backbone_params={"max_sequence_length": 16},
        resolution=16, train_batch_size=2, max_train_steps=1, learning_rate=1e-3,
        unet_time_cond_proj_dim=None, w_min=3.0, w_max=3.0, validation_steps=0,
        checkpointing_steps=0, report_to="none", seed=0, output_dir=str(root / "run"))).run(
        progress=False)
    return {"teacher": teacher, "student": out / "pipeline"}


def test_a_flow_student_keeps_its_scheduler_and_samples_as_diffusers_does(models):
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe = load_pipeline(models["student"], "lcm", device="cpu")
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    assert pipe.text_encoder_3 is None  # saved without T5, loaded without it
    result = sample_student(models["student"], ["a red circle"], steps=2, guidance_scale=1.0,
                            device="cpu", height=16, width=16)
    assert result.unet_evaluations == 2 and result.images[0].size == (16, 16)
    direct = pipe("a red circle", num_inference_steps=2, guidance_scale=1.0, height=16, width=16,
                  generator=torch.Generator("cpu").manual_seed(0), output_type="pil").images[0]
    assert list(direct.getdata()) == list(result.images[0].getdata())


def test_eval_compares_an_sd3_student_with_its_teacher(models, tmp_path):
    (tmp_path / "p.txt").write_text("a red circle\na blue square\n")
    result = CliRunner().invoke(build_app(), [
        "eval", str(models["student"]), "--prompts", str(tmp_path / "p.txt"), "--steps", "2",
        "--teacher", str(models["teacher"]), "--teacher-steps", "2", "-g", "1.0",
        "--metrics", "jpeg-compressibility", "--device", "cpu", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    assert [(r["steps"], r["unet_evaluations"]) for r in rows] == [(2, 2), (2, 2)]
    assert all(r["jpeg-compressibility"] < 0 for r in rows)
