"""`rewardkit sample` and `rewardkit eval` take an SD3 student and teacher: the flow pipeline
keeps its FlowMatch scheduler (what the student was distilled for), a folder saved without T5
loads, its T5 token count (``sampling.json``) is what rewardkit samples with, and the
transformer's calls are counted like a UNet's."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import rewardkit as rk
from rewardkit.call_defaults import CALL_DEFAULTS_FILE, read_call_defaults
from rewardkit.cli import build_app
from rewardkit.errors import ConfigError
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
    # trained with 16 T5 tokens (not diffusers' 256): the folder says so and rewardkit samples so
    assert read_call_defaults(models["student"]) == {"max_sequence_length": 16}
    assert pipe.rewardkit_call_kwargs == {"max_sequence_length": 16}

    def direct(**call):
        return pipe("a red circle", num_inference_steps=2, guidance_scale=1.0, height=16,
                    width=16, generator=torch.Generator("cpu").manual_seed(0),
                    output_type="pil", **call).images[0]

    assert list(direct(max_sequence_length=16).getdata()) == list(result.images[0].getdata())
    # the setting matters: diffusers' default feeds other (zero) tokens, another image
    assert list(direct().getdata()) != list(result.images[0].getdata())


def test_the_backbone_reads_the_saved_sequence_length(models):
    from rewardkit.backbones.stable_diffusion_3 import StableDiffusion3Backbone

    assert StableDiffusion3Backbone(str(models["student"])).max_sequence_length == 16
    assert StableDiffusion3Backbone(str(models["student"]),
                                    max_sequence_length=8).max_sequence_length == 8
    assert StableDiffusion3Backbone(str(models["teacher"])).max_sequence_length == 256


@pytest.mark.parametrize("text, culprit", [
    ("{not json", "not readable JSON"), ("[1]", "JSON object"),
    ('{"max_sequence_length": 0}', "positive integer"),
    ('{"max_sequence_length": true}', "positive integer"),
    ('{"guidance": 2}', "unknown key 'guidance'")])
def test_a_broken_sampling_file_is_named_before_loading(models, tmp_path, text, culprit):
    import shutil

    folder = tmp_path / "student"
    shutil.copytree(models["student"], folder)
    (folder / CALL_DEFAULTS_FILE).write_text(text)
    with pytest.raises(ConfigError, match=culprit) as caught:
        load_pipeline(folder, "lcm", device="cpu")
    assert CALL_DEFAULTS_FILE in str(caught.value)


def _eval_rows(models, tmp_path, prompts, guidance):
    """`rewardkit eval` of the student against the teacher at 2 steps each: results.json's rows."""
    (tmp_path / "p.txt").write_text("".join(f"{p}\n" for p in prompts))
    result = CliRunner().invoke(build_app(), [
        "eval", str(models["student"]), "--prompts", str(tmp_path / "p.txt"), "--steps", "2",
        "--teacher", str(models["teacher"]), "--teacher-steps", "2", "-g", guidance,
        "--metrics", "jpeg-compressibility", "--device", "cpu", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    return json.loads((tmp_path / "out" / "results.json").read_text())["rows"]


def test_eval_compares_an_sd3_student_with_its_teacher(models, tmp_path):
    rows = _eval_rows(models, tmp_path, ["a red circle", "a blue square"], "1.0")
    assert [(r["steps"], r["unet_evaluations"]) for r in rows] == [(2, 2), (2, 2)]
    assert all(r["jpeg-compressibility"] < 0 for r in rows)


def test_a_flow_student_samples_without_guidance_whatever_the_scale(models, tmp_path):
    """Its guidance is baked in: eval's --guidance sets the teacher's CFG, the student samples
    at scale 1 (one transformer call per step) and its row says so."""
    guided = sample_student(models["student"], ["a red circle"], steps=2, guidance_scale=7.5,
                            device="cpu", height=16, width=16)
    plain = sample_student(models["student"], ["a red circle"], steps=2, guidance_scale=1.0,
                           device="cpu", height=16, width=16)
    assert guided.guidance_scale == 1.0 and guided.unet_evaluations == 2
    assert list(guided.images[0].getdata()) == list(plain.images[0].getdata())

    rows = {r["kind"]: r for r in _eval_rows(models, tmp_path, ["a red circle"], "3.0")}
    assert (rows["student"]["guidance_scale"], rows["student"]["unet_evaluations"]) == (1.0, 2)
    assert (rows["teacher"]["guidance_scale"], rows["teacher"]["unet_evaluations"]) == (3.0, 4)


def test_the_demo_session_samples_an_sd3_student_and_teacher(models):
    from rewardkit.demo.session import DemoSession

    session = DemoSession(str(models["student"]), str(models["teacher"]), device="cpu")
    result = session.generate("a red circle", steps=2, guidance=3.0, seed=1, teacher_steps=2)
    assert result.student.image.size == result.teacher.image.size
    assert (result.student.unet_evaluations, result.teacher.unet_evaluations) == (2, 4)


def test_a_student_given_by_hub_id_gets_its_sampling_file_and_no_guidance(models, monkeypatch,
                                                                          caplog):
    """The same student as if pushed to the hub: diffusers loads it (here: redirected to the
    folder) but does not fetch ``sampling.json``, so rewardkit fetches it through the hub cache
    once the model loaded; the loaded FlowMatch scheduler says its guidance is baked in."""
    import huggingface_hub
    from diffusers import DiffusionPipeline
    from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError

    from rewardkit.sampling import _absent_parts

    repo, folder = "someone/tiny-sd3-student", models["student"]
    original = DiffusionPipeline.from_pretrained.__func__

    def from_hub(cls, name, **kwargs):
        assert name == repo
        return original(cls, str(folder), **{**kwargs, **_absent_parts(folder)})

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", classmethod(from_hub))
    fetched = []

    def download(repo_id, filename, **_):
        fetched.append((repo_id, filename))
        return str(folder / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    pipe = load_pipeline(repo, "lcm", device="cpu")
    assert fetched == [(repo, CALL_DEFAULTS_FILE)]
    assert pipe.rewardkit_call_kwargs == {"max_sequence_length": 16}
    assert pipe.rewardkit_baked_guidance is True

    def no_file(repo_id, filename, **_):
        raise EntryNotFoundError(f"{filename} is not in {repo_id}")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_file)
    assert load_pipeline(repo, "lcm", device="cpu").rewardkit_call_kwargs == {}

    def offline(repo_id, filename, **_):
        raise LocalEntryNotFoundError("offline and not cached")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with caplog.at_level("WARNING", logger="rewardkit.call_defaults"):
        assert load_pipeline(repo, "lcm", device="cpu").rewardkit_call_kwargs == {}
    assert f"could not fetch {CALL_DEFAULTS_FILE} of '{repo}'" in caplog.text
