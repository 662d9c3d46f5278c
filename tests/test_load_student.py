"""``backbone.load_student``: a saved student (pipeline folder or training checkpoint) read back
as a trainable fp32 UNet, on tiny SD and SDXL pipelines built offline and read through the same
``from_pretrained`` path a real SD 2.1 / SDXL folder takes."""

from __future__ import annotations

import shutil
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rewardkit.backbones import Backbone
from rewardkit.backbones.stable_diffusion import StableDiffusionBackbone
from rewardkit.backbones.stable_diffusion_xl import StableDiffusionXLBackbone
from rewardkit.errors import ConfigError
from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline
from rewardkit.testing.tiny_sdxl import build_tiny_sdxl_pipeline
from rewardkit.testing.tiny_training import tiny_lcd_config, write_tiny_image_folder

DIM = 32


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    return build_tiny_sd_pipeline(tmp_path_factory.mktemp("sd") / "teacher")


@pytest.fixture(scope="module")
def backbone(teacher_dir) -> StableDiffusionBackbone:
    return StableDiffusionBackbone(str(teacher_dir))


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory) -> StableDiffusionXLBackbone:
    return StableDiffusionXLBackbone(str(build_tiny_sdxl_pipeline(
        tmp_path_factory.mktemp("sdxl") / "teacher")))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, teacher_dir) -> dict[str, Path]:
    """Output folders of one-step ``lcd`` runs (full and LoRA) with a checkpoint at step 1."""
    from rewardkit.recipes.lcd import LCDRecipe

    root = tmp_path_factory.mktemp("runs")
    data = write_tiny_image_folder(root / "data", count=4, size=16)
    out = {}
    for label, extra in (("full", {}), ("lora", dict(use_lora=True, lora_rank=4, lora_alpha=2))):
        out[label] = LCDRecipe(tiny_lcd_config(
            teacher_dir, data, root / label, max_train_steps=1, checkpointing_steps=1,
            learning_rate=1e-2, **extra)).run(progress=False)
    return out


def _perturb(unet: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Move every trainable tensor a little, so a round trip cannot pass by reading the teacher."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(unet.named_parameters()):
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=g) * 0.02)
    return unet


def _inputs(backbone, batch: int = 2):
    g = torch.Generator().manual_seed(0)
    side = backbone.sample_size
    latents = torch.randn(batch, backbone.latent_channels, side, side, generator=g)
    return (latents, torch.tensor([999, 259][:batch]),
            backbone.encode_prompts(["a red circle", "a photo of a dog"][:batch]),
            torch.randn(batch, DIM, generator=g))


def _assert_same_state(loaded: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    state = loaded.state_dict()
    assert state.keys() == expected.keys()
    differ = [k for k in expected if not torch.equal(state[k].cpu(), expected[k].cpu())]
    assert not differ, differ[:3]


def _trainable(unet: torch.nn.Module) -> list[str]:
    return [n for n, p in unet.named_parameters() if p.requires_grad]


# ---------------------------------------------------------------- pipeline folders


@pytest.mark.parametrize("which", ["sd", "sdxl"])
def test_a_saved_full_student_loads_back_with_identical_weights(which, backbone, sdxl, tmp_path):
    bb = backbone if which == "sd" else sdxl
    student = _perturb(bb.build_student(time_cond_proj_dim=DIM), seed=1)
    folder = bb.save_pipeline(student, tmp_path / "student")
    loaded = bb.load_student(folder)
    _assert_same_state(loaded, student.state_dict())
    assert loaded.config.time_cond_proj_dim == DIM and loaded.training
    assert all(p.dtype == torch.float32 and p.requires_grad for p in loaded.parameters())
    assert not getattr(loaded, "peft_config", None)
    if which == "sd":
        latents, t, cond, w = _inputs(bb)
        with torch.no_grad():
            assert torch.equal(bb.predict(loaded, latents, t, cond, w),
                               bb.predict(student, latents, t, cond, w))


@pytest.mark.parametrize("which, dim", [("sd", DIM), ("sd", None), ("sdxl", DIM)])
def test_a_saved_lora_student_round_trips_as_base_weights_plus_trainable_adapters(
        which, dim, backbone, sdxl, tmp_path):
    bb = backbone if which == "sd" else sdxl
    student = _perturb(bb.add_lora(bb.build_student(time_cond_proj_dim=dim), rank=4, alpha=2),
                       seed=2)
    folder = bb.save_pipeline(student, tmp_path / "student")
    loaded = bb.load_student(folder)
    assert loaded.peft_config["default"].r == 4 and loaded.peft_config["default"].lora_alpha == 2
    _assert_same_state(loaded, student.state_dict())  # the teacher's weights, adapters, embedding
    assert _trainable(loaded) == _trainable(student)
    assert loaded.training
    frozen = bb.load_student(folder, train_cond_proj=False)
    assert all(".lora_" in n for n in _trainable(frozen))
    # lora=False: the merged UNet diffusers reads from the folder, every weight trainable
    from diffusers import UNet2DConditionModel

    merged = bb.load_student(folder, lora=False)
    assert not getattr(merged, "peft_config", None) and all(p.requires_grad for p in merged.parameters())
    _assert_same_state(merged, UNet2DConditionModel.from_pretrained(folder, subfolder="unet").state_dict())
    if which == "sd":
        latents, t, cond, w = _inputs(bb)
        w = w if dim else None
        with torch.no_grad():
            expected = bb.predict(student, latents, t, cond, w)
            assert torch.equal(bb.predict(loaded, latents, t, cond, w), expected)
            torch.testing.assert_close(bb.predict(merged, latents, t, cond, w), expected,
                                       rtol=1e-4, atol=1e-5)


def test_lora_students_are_refused_on_another_teacher(backbone, tmp_path):
    student = _perturb(backbone.add_lora(backbone.build_student(time_cond_proj_dim=DIM), rank=4),
                       seed=3)
    folder = backbone.save_pipeline(student, tmp_path / "student")
    other = StableDiffusionBackbone(str(build_tiny_sd_pipeline(tmp_path / "other", seed=7)))
    with pytest.raises(ConfigError, match="was not trained on this backbone's teacher"):
        other.load_student(folder)
    bigger = StableDiffusionBackbone(str(build_tiny_sd_pipeline(
        tmp_path / "bigger", unet_block_out_channels=(32, 32))))
    with pytest.raises(ConfigError, match="does not fit this backbone's teacher"):
        bigger.load_student(folder, lora=False)


# ---------------------------------------------------------------- training checkpoints


def test_a_full_checkpoint_loads_as_the_trained_student(backbone, runs):
    checkpoint = runs["full"] / "checkpoint-1"
    loaded = backbone.load_student(checkpoint)
    _assert_same_state(loaded, load_file(str(checkpoint / "model.safetensors")))
    assert all(p.requires_grad for p in loaded.parameters()) and loaded.training
    # the run's final pipeline is the same student, read the diffusers way
    _assert_same_state(backbone.load_student(runs["full"] / "pipeline"), loaded.state_dict())


def test_a_lora_checkpoint_loads_with_its_adapters_and_merges_on_request(backbone, runs, tmp_path):
    checkpoint = runs["lora"] / "checkpoint-1"
    loaded = backbone.load_student(checkpoint)
    _assert_same_state(loaded, load_file(str(checkpoint / "model.safetensors")))
    assert loaded.peft_config["default"].lora_alpha == 2
    assert set(_trainable(loaded)) == {n for n in loaded.state_dict()
                                       if ".lora_" in n or "cond_proj" in n}
    _assert_same_state(backbone.load_student(runs["lora"] / "pipeline"), loaded.state_dict())
    merged = backbone.load_student(checkpoint, lora=False)
    from diffusers import UNet2DConditionModel

    saved = UNet2DConditionModel.from_pretrained(runs["lora"] / "pipeline", subfolder="unet")
    _assert_same_state(merged, saved.state_dict())
    # without the run's config.json next to it, the LoRA's alpha is unknown: refused, not guessed
    alone = tmp_path / "checkpoint-1"
    shutil.copytree(checkpoint, alone)
    with pytest.raises(ConfigError, match="gives its lora_alpha"):
        backbone.load_student(alone)
    with pytest.raises(ConfigError, match="fully fine-tuned student, not a LoRA"):
        backbone.load_student(runs["full"] / "checkpoint-1", lora=True)


# ---------------------------------------------------------------- refusals


def test_what_is_not_a_student_is_refused_in_one_sentence_naming_it(backbone, teacher_dir, runs,
                                                                     tmp_path):
    def refusal(path, **kwargs) -> str:
        with pytest.raises(ConfigError) as caught:
            backbone.load_student(path, **kwargs)
        message = str(caught.value)
        assert str(path) in message and message.count(". ") == 0, message
        return message

    assert "does not exist" in refusal(tmp_path / "missing")
    (tmp_path / "file.txt").write_text("x")
    assert "is a file" in refusal(tmp_path / "file.txt")
    message = refusal(tmp_path)
    assert "neither a distilled pipeline folder" in message and "checkpoint-N/" in message
    assert "it holds checkpoint-1/, pipeline/: pass one of those" in refusal(runs["full"])
    assert "is a teacher pipeline" in refusal(teacher_dir)
    assert "holds no student LoRA" in refusal(runs["full"] / "pipeline", lora=True)
    broken = tmp_path / "checkpoint-9"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    assert "cannot be read" in refusal(broken)


def test_build_student_points_a_distilled_folder_to_load_student(backbone, tmp_path):
    folder = backbone.save_pipeline(backbone.build_student(time_cond_proj_dim=DIM), tmp_path / "s")
    with pytest.raises(ConfigError, match=r"already has a guidance embedding.*load_student"):
        StableDiffusionBackbone(str(folder)).build_student()


def test_a_backbone_without_load_student_says_so():
    with pytest.raises(ConfigError, match="'toy' backbone cannot load a saved student"):
        Backbone.load_student(types.SimpleNamespace(name="toy"), "somewhere")

