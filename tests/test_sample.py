"""Sampling saved students (LCMScheduler) and teachers (DDIM + CFG), from Python and the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rewardkit.backbones.stable_diffusion import StableDiffusionBackbone
from rewardkit.errors import ConfigError
from rewardkit.sampling import load_pipeline, make_grid, sample_student, sample_teacher
from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline


@pytest.fixture(scope="module", params=("epsilon", "v_prediction"))
def dirs(request, tmp_path_factory) -> tuple[Path, Path]:
    """(teacher folder, saved student folder)."""
    root = tmp_path_factory.mktemp(request.param)
    teacher = build_tiny_sd_pipeline(root / "teacher", prediction_type=request.param)
    backbone = StableDiffusionBackbone(str(teacher))
    student = backbone.build_student()
    return teacher, backbone.save_pipeline(student, root / "student")


def _array(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_student_samples_in_1_2_4_steps_with_one_unet_call_per_step(dirs):
    _, student = dirs
    for steps in (1, 2, 4):
        result = sample_student(student, ["a red circle", "a blue square", "a cat"], steps=steps,
                                guidance_scale=7.5, seed=0, device="cpu", batch_size=2)
        assert len(result.images) == 3 and result.images[0].size == (16, 16)
        assert result.unet_evaluations == steps * 2  # 2 batches, no separate unconditional pass
        assert result.ms_per_image > 0 and "UNet call" in result.summary()


def test_student_samples_are_seeded_per_image(dirs):
    _, student = dirs
    prompts = ["a red circle", "a red circle"]
    a = sample_student(student, prompts, steps=2, seed=5, device="cpu", batch_size=2).images
    b = sample_student(student, prompts, steps=2, seed=5, device="cpu", batch_size=1).images
    c = sample_student(student, prompts[:1], steps=2, seed=6, device="cpu").images
    for x, y in zip(a, b):  # independent of batching (up to float rounding)
        assert np.abs(_array(x) - _array(y)).max() <= 2
    assert np.abs(_array(a[0]) - _array(a[1])).max() > 2  # seeds 5 and 6 differ
    assert np.abs(_array(a[1]) - _array(c[0])).max() <= 2  # image 1 of seed 5 is seed 6


def test_teacher_samples_with_ddim_and_batched_cfg(dirs):
    from diffusers import DDIMScheduler

    teacher, _ = dirs
    pipe = load_pipeline(teacher, "ddim", device="cpu")
    assert isinstance(pipe.scheduler, DDIMScheduler)
    result = sample_teacher(teacher, "a red circle", steps=3, guidance_scale=7.5, device="cpu")
    assert len(result.images) == 1 and result.unet_evaluations == 3
    unguided = sample_teacher(teacher, "a red circle", steps=3, guidance_scale=1.0, device="cpu")
    assert np.abs(_array(result.images[0]) - _array(unguided.images[0])).max() > 0


def test_loading_a_pipeline_in_half_precision_uses_diffusers_current_dtype_keyword(dirs):
    import warnings

    teacher, _ = dirs
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe = load_pipeline(teacher, "ddim", device="cpu", dtype="bfloat16")
    assert pipe.unet.dtype == torch.bfloat16  # the keyword was understood
    assert not [w for w in caught if "torch_dtype" in str(w.message)]


def test_bad_inputs_raise_config_errors(dirs, tmp_path):
    _, student = dirs
    with pytest.raises(ConfigError, match="does not exist"):
        sample_student(tmp_path / "missing", "x", device="cpu")
    with pytest.raises(ConfigError, match="steps"):
        sample_student(student, "x", steps=0, device="cpu")


def test_make_grid_tiles_images():
    images = [Image.new("RGB", (4, 3), (i * 40, 0, 0)) for i in range(5)]
    grid = make_grid(images)
    assert grid.size == (12, 6)
    assert grid.getpixel((4, 0)) == (40, 0, 0) and grid.getpixel((4, 3)) == (160, 0, 0)


# ---------------------------------------------------------------- the CLI


def _cli(args: list[str]) -> int:
    from rewardkit.cli import run
    from rewardkit.plugins import reset_host

    reset_host()
    return run(args)


def test_cli_sample_writes_png(dirs, tmp_path):
    _, student = dirs
    out = tmp_path / "out.png"
    code = _cli(["sample", str(student), "a red circle", "--steps", "2", "--guidance", "7.5",
                 "--seed", "0", "-o", str(out), "--device", "cpu"])
    assert code == 0 and out.is_file()
    image = Image.open(out)
    assert image.format == "PNG" and image.size == (16, 16)
    expected = sample_student(student, "a red circle", steps=2, guidance_scale=7.5, seed=0, device="cpu")
    assert np.abs(_array(image.convert("RGB")) - _array(expected.images[0])).max() <= 2


def test_cli_prompt_file_numbered_files_grid_and_teacher(dirs, tmp_path):
    teacher, student = dirs
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\na blue square\na cat\n")
    assert _cli(["sample", str(student), "--prompt-file", str(prompts), "-o",
                 str(tmp_path / "s.png"), "--steps", "1", "--device", "cpu"]) == 0
    assert sorted(p.name for p in tmp_path.glob("s_*.png")) == ["s_000.png", "s_001.png", "s_002.png"]
    assert _cli(["sample", str(student), "--prompt-file", str(prompts), "--grid", "-o",
                 str(tmp_path / "grid.png"), "--device", "cpu"]) == 0
    assert Image.open(tmp_path / "grid.png").size == (32, 32)
    assert _cli(["sample", str(teacher), "a red circle", "--teacher", "--steps", "2", "-o",
                 str(tmp_path / "t.png"), "--device", "cpu"]) == 0
    assert (tmp_path / "t.png").is_file()


def test_cli_reports_missing_model_dir(tmp_path, capsys):
    code = _cli(["sample", str(tmp_path / "nope"), "x", "-o", str(tmp_path / "o.png")])
    assert code == 1
    assert "nope" in capsys.readouterr().err
    assert _cli(["sample", str(tmp_path), "-o", str(tmp_path / "o.png")]) == 1  # no prompt at all
