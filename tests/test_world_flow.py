"""`rewardkit world build --teacher flow --size tiny`: the flow teacher is an SD3 pipeline on the
world's own VAE and text encoder, it loads through the stable-diffusion-3 backbone and plain
diffusers, and the build refuses what it must not overwrite."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from rewardkit import cli
from rewardkit.call_defaults import read_call_defaults
from rewardkit.cli import build_app
from rewardkit.errors import ConfigError
from rewardkit.world.assets import ASSETS, TEACHER
from rewardkit.world.flow_build import (FLOW_BUILD_FILE, FLOW_TEACHER, build_flow_world,
                                        make_flow_plan)
from rewardkit.world.flow_eval import flow_backbone, student_images, teacher_images
from rewardkit.world.flow_teacher import MAX_SEQUENCE_LENGTH, projection_encoder


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("flow-world")
    assert cli.run(["world", "build", "--teacher", "flow", "--size", "tiny", "--out", str(out),
                    "--no-progress"]) == 0
    return out


def test_the_build_writes_the_teacher_and_its_report(built):
    report = json.loads((built / FLOW_BUILD_FILE).read_text())
    assert report["size"] == "tiny" and report["teacher"]["path"] == FLOW_TEACHER
    assert report["teacher"]["transformer"]["steps"] == 3
    assert report["teacher"]["backbone_params"] == {"max_sequence_length": MAX_SEQUENCE_LENGTH}
    quality = report["quality"]
    assert {"validation", "untrained_validation", "renders_validation"} <= set(quality)
    assert [p.name for p in built.iterdir() if p.name.startswith(".")] == []  # no work folder


def test_the_teacher_reuses_the_worlds_vae_and_text_encoder(built):
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel

    backbone = flow_backbone(built / FLOW_TEACHER)
    world_vae = AutoencoderKL.from_pretrained(ASSETS / TEACHER / "vae", torch_dtype=torch.float32)
    for name, value in world_vae.state_dict().items():
        torch.testing.assert_close(backbone.vae.state_dict()[name], value)
    assert backbone.vae_shift_factor == 0.0 and backbone.latent_channels == 4
    world_text = CLIPTextModel.from_pretrained(ASSETS / TEACHER / "text_encoder")
    ids = backbone.tokenizer(["a red circle"], padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        pooled = backbone.text_encoder(ids).text_embeds
        torch.testing.assert_close(pooled, world_text(ids).pooler_output)  # identity projection
    assert backbone._pipe.text_encoder_3 is None


def test_the_teacher_and_a_student_sample_through_the_backbone(built):
    backbone = flow_backbone(built / FLOW_TEACHER)
    prompts = ["a red circle", "two small blue squares"]
    images, seconds = teacher_images(backbone, prompts, steps=2, guidance_scale=3.0)
    assert images.shape == (2, 3, 32, 32) and seconds > 0
    again, _ = teacher_images(backbone, prompts, steps=2, guidance_scale=3.0)
    assert torch.equal(images, again)  # seeded per prompt
    student = backbone.build_student()
    images, _ = student_images(backbone, student, prompts, steps=2)
    assert images.shape == (2, 3, 32, 32) and 0 <= images.min() <= images.max() <= 1


def test_plain_diffusers_samples_it_with_one_t5_token(built):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(built / FLOW_TEACHER), text_encoder_3=None,
                                             tokenizer_3=None)
    image = pipe("a red circle", num_inference_steps=2, guidance_scale=3.0, height=32, width=32,
                 max_sequence_length=MAX_SEQUENCE_LENGTH, output_type="np").images[0]
    assert image.shape == (32, 32, 3)


@pytest.mark.parametrize("where", ["built", "shipped"])
def test_the_teacher_folder_records_its_one_t5_token(built, where):
    """The backbone, `rewardkit sample/eval/demo` read the token count from the folder, so none
    feeds the teacher diffusers' 256 zero tokens it was not trained on."""
    from rewardkit.sampling import load_pipeline

    folder = (built if where == "built" else ASSETS) / FLOW_TEACHER
    if not (folder / "model_index.json").is_file():
        pytest.skip("no flow teacher shipped in the package")
    assert read_call_defaults(folder) == {"max_sequence_length": MAX_SEQUENCE_LENGTH}
    from rewardkit.backbones.stable_diffusion_3 import StableDiffusion3Backbone

    assert StableDiffusion3Backbone(str(folder)).max_sequence_length == MAX_SEQUENCE_LENGTH
    if where == "built":
        pipe = load_pipeline(folder, "ddim", device="cpu")
        assert pipe.rewardkit_call_kwargs == {"max_sequence_length": MAX_SEQUENCE_LENGTH}


def test_the_build_refuses_what_it_must_not_overwrite(tmp_path):
    (tmp_path / FLOW_TEACHER).mkdir()
    with pytest.raises(ConfigError, match="no flow build wrote there"):
        build_flow_world(tmp_path, size="tiny", progress=False)
    with pytest.raises(ConfigError, match="not a world teacher folder"):
        build_flow_world(tmp_path / "out", size="tiny", progress=False, source=tmp_path)
    with pytest.raises(ConfigError, match="--size"):
        make_flow_plan("huge")
    with pytest.raises(ConfigError, match="--minutes"):
        make_flow_plan("full", minutes=0)
    assert make_flow_plan("full", minutes=2).teacher.seconds == 120
    result = CliRunner().invoke(build_app(), ["world", "build", "--teacher", "dit"])
    assert isinstance(result.exception, ConfigError)
    assert "--teacher must be unet or flow" in str(result.exception)


def test_projection_encoder_keeps_the_clip_weights():
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=20, hidden_size=8, intermediate_size=16,
                                        num_hidden_layers=1, num_attention_heads=2,
                                        max_position_embeddings=8)).eval()
    ids = torch.tensor([[0, 3, 4, 19]])
    with torch.no_grad():
        projected = projection_encoder(clip)(ids, output_hidden_states=True)
        plain = clip(ids, output_hidden_states=True)
    torch.testing.assert_close(projected.hidden_states[-2], plain.hidden_states[-2])
    torch.testing.assert_close(projected.text_embeds, plain.pooler_output)
