"""Bad inputs from issue 28: each gives one sentence naming the culprit (a
:mod:`rewardkit.errors` type, never a library's traceback), is handled correctly, or loses no
saved data."""

from __future__ import annotations

import json
import math

import pytest

import rewardkit.api as rk
from rewardkit.cli import run as cli_run
from rewardkit.config import read_config_file
from rewardkit.errors import ConfigError
from rewardkit.recipes.lcd import LCDRecipe


@pytest.fixture
def teacher_dir(tmp_path):
    (tmp_path / "teacher").mkdir()
    return str(tmp_path / "teacher")


def no_loading(*args, **kwargs):  # pragma: no cover - reaching it is the failure
    raise AssertionError("a model was loaded before the config was validated")


# ---------------------------------------------------------------- config values: NaN, inf


@pytest.mark.parametrize("recipe,key,value", [
    ("lcd", "learning_rate", "nan"), ("lcd", "learning_rate", "inf"),
    ("lcd", "w_min", "nan"), ("lcd", "huber_c", "nan"), ("lcd", "max_grad_norm", "nan"),
    ("lcd", "adam_epsilon", "-inf"), ("rg-lcd", "proxy_lr", "nan"),
    ("rg-lcd", "reward_scale", "inf"),
])
def test_a_non_finite_number_is_refused_naming_the_key(recipe, key, value, teacher_dir,
                                                       monkeypatch, capsys):
    monkeypatch.setattr(LCDRecipe, "build_backbone", no_loading)
    code = cli_run(["run", recipe, "--pretrained_teacher_model", teacher_dir,
                    "--train_shards_path_or_url", "data-{000..009}.tar", "--reward", "rule-judge",
                    f"--{key}", value] if recipe == "rg-lcd" else
                   ["run", recipe, "--pretrained_teacher_model", teacher_dir,
                    "--train_shards_path_or_url", "data-{000..009}.tar", f"--{key}", value])
    err = capsys.readouterr().err
    assert code == 1
    assert f"'{key}' must be a finite number, got '{value}'" in err
    assert "Traceback" not in err and "--debug" not in err


@pytest.mark.parametrize("key,value", [("learning_rate", math.nan), ("learning_rate", math.inf),
                                       ("w_min", math.nan), ("huber_c", math.inf),
                                       ("w_max", math.nan)])
def test_a_config_built_in_python_with_a_non_finite_number_is_refused(key, value, teacher_dir):
    config = LCDRecipe.Config(pretrained_teacher_model=teacher_dir,
                              train_shards_path_or_url="data-{000..009}.tar")
    setattr(config, key, value)
    with pytest.raises(ConfigError, match=f"^{key} must be a finite number, got {value}$"):
        config.validate()


def test_the_positive_and_non_negative_checks_refuse_nan_and_inf(teacher_dir):
    config = LCDRecipe.Config(pretrained_teacher_model=teacher_dir,
                              train_shards_path_or_url="data-{000..009}.tar")
    config.learning_rate, config.huber_c = math.nan, math.inf
    with pytest.raises(ConfigError, match="^learning_rate must be positive and finite, got nan$"):
        config.require_positive("learning_rate")
    with pytest.raises(ConfigError, match="^huber_c must be finite and not negative, got inf$"):
        config.require_non_negative("huber_c")


def test_a_binary_config_file_is_named(tmp_path):
    path = tmp_path / "config.toml"
    path.write_bytes(b"\x80\x81\xfe\xff" * 64)
    with pytest.raises(ConfigError, match=r"config file '.*config.toml' is not text"):
        read_config_file(path)
    with pytest.raises(ConfigError, match="is not text"):
        rk.recipe("lcd", path)


# ---------------------------------------------------------------- rewardkit eval's output folder


@pytest.fixture(scope="module")
def eval_models(tmp_path_factory):
    """A tiny teacher and two students with other weights, both named ``student``."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from rewardkit.backbones.stable_diffusion import StableDiffusionBackbone
    from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline

    root = tmp_path_factory.mktemp("eval-models")
    teacher = build_tiny_sd_pipeline(root / "teacher")
    backbone = StableDiffusionBackbone(str(teacher))
    first = backbone.save_pipeline(backbone.build_student(), root / "a" / "student")
    second = root / "b" / "student"
    shutil.copytree(first, second)
    weights = second / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    save_file({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()},
              str(weights))
    (root / "prompts.txt").write_text("a red circle\na green square\n")
    del torch
    return {"teacher": teacher, "a": first, "b": second, "prompts": root / "prompts.txt"}


def run_cli(*args):
    from typer.testing import CliRunner

    from rewardkit.cli import build_app

    result = CliRunner().invoke(build_app(), [str(a) for a in args])
    return result.exit_code, result.output + (str(result.exception) if result.exception else "")


def evaluate(models, out, *extra, students=("a",)):
    return run_cli("eval", *(models[s] for s in students), "--prompts", models["prompts"],
                   "--steps", "1", "--metrics", "jpeg-compressibility", "--device", "cpu",
                   "-o", out, *extra)


def snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_eval_refuses_a_folder_of_the_users_files_and_changes_nothing(eval_models, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.md").write_text("my own report")
    (out / "notes.txt").write_text("my notes")
    before = snapshot(out)
    for extra in ((), ("--overwrite",), ("--resume",)):
        code, text = evaluate(eval_models, out, *extra)
        assert code == 1 and "report.md, which no evaluation wrote there" in text, text
    assert snapshot(out) == before
    (out / "report.md").unlink()  # only a file the evaluation does not write: beside it, by consent
    code, text = evaluate(eval_models, out)
    assert code == 1 and "already holds files (notes.txt)" in text and "--overwrite" in text
    code, text = evaluate(eval_models, out, "--overwrite")
    assert code == 0, text
    assert (out / "notes.txt").read_text() == "my notes" and (out / "results.json").is_file()


def test_eval_refuses_to_replace_an_earlier_evaluation_without_resume_or_overwrite(
        eval_models, tmp_path):
    out = tmp_path / "eval"
    assert evaluate(eval_models, out)[0] == 0
    before = snapshot(out)
    code, text = evaluate(eval_models, out, "--seed", "5")
    assert code == 1 and "already holds an evaluation" in text and "--resume" in text, text
    assert snapshot(out) == before
    code, text = evaluate(eval_models, out, "--seed", "5", "--overwrite")
    assert code == 0, text
    assert json.loads((out / "results.json").read_text())["seed"] == 5


@pytest.mark.parametrize("extra,match", [
    (("--seed", "1"), "sampled with seed 0, this run 1; rerun with the earlier --seed"),
    (("-g", "3"), "sampled with guidance_scale 7.5, this run asks for 3.0"),
    (("-k", "2"), "images_per_prompt 1, this run 2"),
])
def test_eval_resume_with_other_settings_is_refused(eval_models, tmp_path, extra, match):
    out = tmp_path / "eval"
    assert evaluate(eval_models, out)[0] == 0
    before = snapshot(out)
    code, text = evaluate(eval_models, out, "--resume", *extra)
    assert code == 1 and match in text, text
    assert snapshot(out) == before


def test_eval_resume_with_the_models_in_another_order_is_refused(eval_models, tmp_path):
    out = tmp_path / "eval"
    assert evaluate(eval_models, out, students=("a", "b"))[0] == 0
    code, text = evaluate(eval_models, out, "--resume", students=("b", "a"))
    assert code == 1 and "the images of model 'student'" in text and "same order" in text, text
    code, text = evaluate(eval_models, out, "--resume", students=("a", "b"))
    assert code == 0, text


def test_eval_resume_with_a_sample_of_another_size_names_it(eval_models, tmp_path):
    from PIL import Image

    out = tmp_path / "eval"
    assert evaluate(eval_models, out)[0] == 0
    sample = out / "images" / "student" / "steps-1" / "00001.png"
    Image.new("RGB", (8, 8)).save(sample)
    code, text = evaluate(eval_models, out, "--resume")
    assert code == 1 and "00001.png is 8x8 px but the model samples 16x16" in text, text
    assert "Traceback" not in text


def test_eval_refuses_a_guidance_of_nan(eval_models, tmp_path):
    code, text = evaluate(eval_models, tmp_path / "eval", "-g", "nan")
    assert code == 1 and "--guidance) must be a finite number, got nan" in text, text
    assert not (tmp_path / "eval").exists()


# ---------------------------------------------------------------- a training run's output folder


def test_a_fresh_run_into_a_folder_of_someone_elses_config_json_is_refused(tmp_path):
    from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline
    from rewardkit.testing.tiny_training import tiny_lcd_config, write_tiny_image_folder

    teacher = build_tiny_sd_pipeline(tmp_path / "teacher")
    data = write_tiny_image_folder(tmp_path / "data", count=4, size=16)
    unet = teacher / "unet"
    before = snapshot(unet)
    for flags in ({}, {"overwrite_output_dir": True}, {"resume_from_checkpoint": "latest"}):
        with pytest.raises(ConfigError, match=r"holds config.json, which no rewardkit run wrote"):
            LCDRecipe(tiny_lcd_config(teacher, data, unet, max_train_steps=1,
                                      **flags)).run(progress=False)
    assert snapshot(unet) == before  # the teacher still loads


def test_an_interrupted_set_up_s_config_json_is_not_someone_elses(tmp_path):
    from rewardkit.training.output_dir import check_output_dir, foreign_entries

    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"output_dir": str(out),
                                                 "pretrained_teacher_model": "t"}))
    assert foreign_entries(out) == []
    check_output_dir(out, None, False)  # as before: the run starts over it
    (out / "config.json").write_text('{"_class_name": "UNet2DConditionModel"}')
    (out / "report.md").write_text("mine")
    assert foreign_entries(out) == ["config.json", "report.md"]


# ---------------------------------------------------------------- resumes that would lie


SMALL_LRM = dict(embed_dim=16, image_widths=[8, 16], text_width=16, text_heads=2)


@pytest.fixture(scope="module")
def train_assets(tmp_path_factory):
    from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline
    from rewardkit.testing.tiny_training import write_tiny_image_folder

    root = tmp_path_factory.mktemp("train")
    return {"teacher": build_tiny_sd_pipeline(root / "teacher"),
            "data": write_tiny_image_folder(root / "data", count=8, size=16)}


def rg_config(assets, out, **overrides):
    import dataclasses

    from rewardkit.recipes.rg_lcd import RGLCDConfig
    from rewardkit.testing.tiny_training import tiny_lcd_config

    base = dataclasses.asdict(tiny_lcd_config(assets["teacher"], assets["data"], out))
    built = RGLCDConfig(**{**base, "reward": "jpeg-compressibility", "proxy": "lrm",
                           "proxy_params": dict(SMALL_LRM), "proxy_batch_size": 2,
                           "vae_decode_batch_size": 4, "proxy_eval_num_prompts": 0,
                           **overrides})
    built.validate()
    return built


@pytest.fixture(scope="module")
def rg_run(train_assets, tmp_path_factory):
    """An rg-lcd run (LRM proxy, replay buffer, two proxy updates a step) checkpointed at 1, 2."""
    from rewardkit.recipes.rg_lcd import RGLCDRecipe

    out = tmp_path_factory.mktemp("rg") / "run"
    RGLCDRecipe(rg_config(train_assets, out, max_train_steps=2, checkpointing_steps=1,
                          proxy_updates_per_step=2, proxy_replay_size=4)).run(progress=False)
    return out


def copy_run(run, tmp_path):
    import shutil

    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.parametrize("override,match", [
    ({"use_lora": True}, r"was written with use_lora = false, this run has use_lora = true; "
                         r"resume with --use_lora false"),
    ({"proxy_params": {**SMALL_LRM, "image_tower": "vit"}}, r"was written with proxy_params = "),
    ({"proxy_replay_size": 2}, r"was written with proxy_replay_size = 4, this run has proxy_replay_size = 2"),
])
def test_a_resume_with_another_model_shape_is_refused_naming_the_key(train_assets, rg_run,
                                                                     tmp_path, override, match):
    from rewardkit.recipes.rg_lcd import RGLCDRecipe

    out = copy_run(rg_run, tmp_path)
    before = snapshot(out)
    config = rg_config(train_assets, out, **{
        "max_train_steps": 3, "checkpointing_steps": 1, "proxy_updates_per_step": 2,
        "proxy_replay_size": 4, "resume_from_checkpoint": "latest", **override})
    with pytest.raises(ConfigError, match=r"^resume_from_checkpoint: '.*checkpoint-2' " + match):
        RGLCDRecipe(config).setup()
    assert snapshot(out) == before


def test_a_checkpoint_missing_its_replay_buffer_is_refused(train_assets, rg_run, tmp_path):
    from rewardkit.recipes.rg_lcd import REPLAY_WEIGHTS, RGLCDRecipe

    out = copy_run(rg_run, tmp_path)
    (out / "checkpoint-2" / REPLAY_WEIGHTS).unlink()
    config = rg_config(train_assets, out, max_train_steps=3, checkpointing_steps=1,
                       proxy_updates_per_step=2, proxy_replay_size=4,
                       resume_from_checkpoint="latest")
    with pytest.raises(ConfigError, match=rf"checkpoint-2' has no {REPLAY_WEIGHTS} although its "
                                          r"proxy replay buffer held 4 triples"):
        RGLCDRecipe(config).setup()


# ---------------------------------------------------------------- sampling and loading models


def test_sampling_a_teacher_folder_as_a_student_is_refused(eval_models, tmp_path):
    code, text = run_cli("sample", eval_models["teacher"], "a red circle", "-n", "1",
                         "--device", "cpu", "-o", tmp_path / "x.png")
    assert code == 1 and "is a teacher, not a distilled student" in text and "--teacher" in text
    assert not (tmp_path / "x.png").exists()
    code, text = run_cli("sample", eval_models["teacher"], "a red circle", "-n", "1",
                         "--teacher", "--device", "cpu", "-o", tmp_path / "x.png")
    assert code == 0, text


@pytest.mark.parametrize("args,match", [
    (("-g", "nan"), "the guidance scale (--guidance) must be a finite number, got nan"),
    (("--device", "cuda:7"), "--device cuda:7: this machine has"),
])
def test_sample_refuses_a_bad_guidance_or_a_missing_device(eval_models, tmp_path, args, match):
    code, text = run_cli("sample", eval_models["a"], "a red circle", "-n", "1",
                         "-o", tmp_path / "x.png", *(args if "--device" in args else
                                                     (*args, "--device", "cpu")))
    assert code == 1 and match in text, text
    assert "Traceback" not in text and "--debug" not in text
    assert not (tmp_path / "x.png").exists()


def test_a_pipeline_with_a_pickled_unet_is_refused_without_torchs_advice(eval_models, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(eval_models["teacher"], folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    weights.unlink()
    state["planted"] = Planted()
    torch.save(state, folder / "unet" / "diffusion_pytorch_model.bin")
    code, text = run_cli("sample", folder, "a red circle", "-n", "1", "--teacher",
                         "--device", "cpu", "-o", tmp_path / "x.png")
    assert code == 1 and f"model_dir '{folder}' could not be loaded" in text, text
    assert "pickled weights file" in text and "weights_only" not in text
    assert not PLANTED_RAN


PLANTED_RAN: list[bool] = []


def _plant() -> None:  # pragma: no cover - running it is the failure
    PLANTED_RAN.append(True)


class Planted:
    def __reduce__(self):
        return (_plant, ())


def test_the_sd_backbone_given_an_sdxl_folder_names_the_backbone_to_use(tmp_path):
    from rewardkit.backbones.stable_diffusion import StableDiffusionBackbone
    from rewardkit.testing.tiny_sdxl import build_tiny_sdxl_pipeline

    folder = build_tiny_sdxl_pipeline(tmp_path / "sdxl")
    with pytest.raises(ConfigError, match=r"is an SDXL pipeline \(StableDiffusionXLPipeline\), "
                                          r".*pass --backbone stable-diffusion-xl"):
        StableDiffusionBackbone(str(folder))


def test_eval_on_a_device_the_machine_lacks_is_named(eval_models, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, text = run_cli("eval", eval_models["a"], "--prompts", eval_models["prompts"],
                         "--steps", "1", "--metrics", "jpeg-compressibility", "--device", "cuda",
                         "-o", tmp_path / "eval")
    assert code == 1 and "--device cuda: this machine has no CUDA device" in text, text
    assert not (tmp_path / "eval").exists()


# ---------------------------------------------------------------- checkpoints on disk


def test_a_full_disk_in_safetensors_names_it_and_leaves_no_half_checkpoint(train_assets, tmp_path,
                                                                          monkeypatch):
    from safetensors import SafetensorError

    import rewardkit.training.safe_state as safe_state
    from rewardkit.testing.tiny_training import tiny_lcd_config
    from rewardkit.training.checkpoint import CheckpointWriteError

    real = safe_state.save_tensor_file
    out = tmp_path / "full"

    def full_at_step_2(tensors, path):
        if ".checkpoint-2.tmp" in str(path):
            raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: '
                                  'StorageFull, message: "No space left on device" })')
        return real(tensors, path)

    monkeypatch.setattr(safe_state, "save_tensor_file", full_at_step_2)
    with pytest.raises(CheckpointWriteError) as raised:
        LCDRecipe(tiny_lcd_config(train_assets["teacher"], train_assets["data"], out,
                                  max_train_steps=2, checkpointing_steps=1)).run(progress=False)
    assert str(raised.value).startswith(f"no space left writing checkpoint-2 in {out}; the "
                                        "previous checkpoint checkpoint-1 is intact")
    assert not (out / ".checkpoint-2.tmp").exists() and not (out / "checkpoint-2").exists()


def test_checkpoints_and_saved_models_follow_the_users_umask(train_assets, tmp_path):
    import os
    import stat

    from rewardkit.testing.tiny_training import tiny_lcd_config

    out = tmp_path / "run"
    old = os.umask(0o022)
    try:
        LCDRecipe(tiny_lcd_config(train_assets["teacher"], train_assets["data"], out,
                                  max_train_steps=1, checkpointing_steps=1)).run(progress=False)
    finally:
        os.umask(old)
    saved = [p for folder in (out / "checkpoint-1", out / "pipeline") for p in folder.rglob("*")
             if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in saved)
    modes = {p.relative_to(out).as_posix(): oct(stat.S_IMODE(p.stat().st_mode)) for p in saved}
    assert set(modes.values()) == {"0o644"}, modes


# ---------------------------------------------------------------- saved proxies


@pytest.fixture
def proxy_folder(tmp_path):
    from rewardkit.proxies import LatentRewardModel

    folder = tmp_path / "proxy"
    LatentRewardModel(latent_channels=4, text_dim=16, **SMALL_LRM).save_pretrained(folder)
    return folder


def test_a_proxy_whose_config_and_weights_differ_is_named_in_a_line(proxy_folder, tmp_path):
    from rewardkit.proxies import LatentRewardModel

    other = tmp_path / "vit"
    LatentRewardModel(latent_channels=4, text_dim=16, image_tower="vit",
                      **SMALL_LRM).save_pretrained(other)
    (proxy_folder / "proxy.safetensors").write_bytes((other / "proxy.safetensors").read_bytes())
    with pytest.raises(ConfigError) as raised:
        LatentRewardModel.from_pretrained(proxy_folder)
    message = str(raised.value)
    assert "does not fit the proxy its proxy_config.json describes" in message
    assert "tensors missing, e.g." in message and len(message) < 600 and "\n" not in message


@pytest.mark.parametrize("damage,match", [
    ("truncated config", r"proxy_config.json' is unreadable \(truncated or not JSON"),
    ("only a bin", r"has no proxy.safetensors, only proxy.bin: pickled weights"),
    ("pickle named safetensors", r"proxy.safetensors' is not a readable safetensors file"),
])
def test_a_damaged_proxy_folder_is_named_and_nothing_is_unpickled(proxy_folder, damage, match):
    import torch

    from rewardkit.proxies import LatentRewardModel

    config, weights = proxy_folder / "proxy_config.json", proxy_folder / "proxy.safetensors"
    if damage == "truncated config":
        config.write_text(config.read_text()[:20])
    elif damage == "only a bin":
        weights.unlink()
        torch.save({"planted": Planted()}, proxy_folder / "proxy.bin")
    else:
        torch.save({"planted": Planted()}, weights)
    with pytest.raises(ConfigError, match=match):
        LatentRewardModel.from_pretrained(proxy_folder)
    assert not PLANTED_RAN


# ---------------------------------------------------------------- demo


def test_demo_on_a_busy_port_is_named_before_anything_loads(tmp_path):
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        code, text = run_cli("demo", tmp_path / "no-model-needed", "--port", port)
    assert code == 1 and f"--port {port} on 127.0.0.1 is in use; pick another --port" in text, text
    code, text = run_cli("demo", tmp_path / "x", "--port", "70000")
    assert code == 1 and "--port must be between 1 and 65535, got 70000" in text, text


# ---------------------------------------------------------------- rewardkit data encode


def test_encode_refuses_a_folder_of_the_users_files_before_the_teacher_loads(tmp_path):
    out = tmp_path / "latents"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, text = run_cli("data", "encode", tmp_path / "images", out, "--teacher",
                         tmp_path / "no-teacher-needed")
    assert code == 1 and "holds files an encode did not write (notes.txt)" in text, text
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_an_interrupted_encodes_shards_may_be_written_again(tmp_path):
    from rewardkit.data.latent_shards import check_encode_output

    (tmp_path / "latents-00000.safetensors").write_bytes(b"")
    (tmp_path / "latents-00001.safetensors.tmp").write_bytes(b"")
    check_encode_output(tmp_path)
    check_encode_output(tmp_path / "new")


# ---------------------------------------------------------------- world build, the sweep


def test_world_build_refuses_a_folder_holding_someone_elses_teacher(tmp_path):
    from rewardkit.world.build import build_world

    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "model_index.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"holds teacher, which no world build wrote there"):
        build_world(tmp_path, size="tiny", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher"]
    with pytest.raises(ConfigError, match="--minutes must be a positive finite number, got nan"):
        build_world(tmp_path / "new", size="tiny", minutes=math.nan, progress=False)


def sweep_module():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bad_inputs.py"
    spec = importlib.util.spec_from_file_location("bad_inputs", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_sweep_has_over_40_distinct_cases_across_the_verbs():
    sweep = sweep_module()
    described = [f"{c.verb}: {c.bad}" for c in sweep.CASES]
    assert len(described) >= 40 and len(set(described)) == len(described)
    verbs = {c.verb.split()[0] for c in sweep.CASES}
    assert {"run", "eval", "sample", "data", "demo", "rewards", "world"} <= verbs
    assert all(c.expect == "works" or c.culprit for c in sweep.CASES)


def test_the_sweep_classifies_outcomes():
    sweep = sweep_module()
    error = sweep.Case("run lcd", "x", "error", "learning_rate", lambda env: None)
    works = sweep.Case("eval", "y", "works", None, lambda env: None)
    R = sweep.Result
    assert sweep.classify(error, R(1, "learning_rate must be finite, got nan"), []) == "clear"
    assert sweep.classify(error, R(1, "something is wrong"), []) == "unclear"
    assert sweep.classify(error, R(1, "ValueError: x (run with --debug for the traceback)"),
                          []) == "raw"
    assert sweep.classify(error, R(1, "", "Traceback ..."), []) == "raw"
    assert sweep.classify(error, R(0), []) == "silent"
    assert sweep.classify(error, R(1, "learning_rate must be finite"), ["/x"]) == "data loss"
    assert sweep.classify(works, R(0, check=True), []) == "handled"
    assert sweep.classify(works, R(0, check=False), []) == "silent"


def test_sample_replaces_only_its_own_images(eval_models, tmp_path):
    mine = tmp_path / "cat.png"
    mine.write_bytes(b"my own picture")
    args = ("sample", eval_models["a"], "a red circle", "-n", "1", "--device", "cpu", "-o")
    code, text = run_cli(*args, mine)
    assert code == 1 and "exists and is not a PNG rewardkit sample wrote" in text, text
    assert mine.read_bytes() == b"my own picture"
    ours = tmp_path / "ours.png"
    assert run_cli(*args, ours)[0] == 0
    assert run_cli(*args, ours, "--seed", "3")[0] == 0  # its own image: replaced
    assert run_cli(*args, mine, "--overwrite")[0] == 0
    code, text = run_cli(*args, tmp_path / "x.unknown")
    assert code == 1 and "cannot be written" in text, text


def test_a_seed_out_of_numpys_range_is_refused_naming_the_key(teacher_dir):
    config = LCDRecipe.Config(pretrained_teacher_model=teacher_dir,
                              train_shards_path_or_url="data-{000..009}.tar", seed=-1)
    with pytest.raises(ConfigError, match=r"^seed must be in \[0, 2\*\*32 - 1\], got -1$"):
        config.validate()


def test_sample_refuses_a_height_the_vae_cannot_make(eval_models, tmp_path):
    code, text = run_cli("sample", eval_models["a"], "a red circle", "-n", "1", "--device", "cpu",
                         "--height", "17", "-o", tmp_path / "x.png")
    assert code == 1 and "--height must be a positive multiple of 2" in text, text
    assert not (tmp_path / "x.png").exists()
