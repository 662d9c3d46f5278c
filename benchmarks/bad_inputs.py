"""A sweep of bad inputs across rewardkit's verbs: does each get one clear sentence, correct
handling, and no lost data?

Every case is a command line (run in process through ``rewardkit.cli.run``, as the console
script runs it) or an API call, with what a user should get:

- ``error``: the command fails with one sentence (a ``rewardkit.errors`` type) naming the
  culprit (the key, file, folder, option or model);
- ``works``: it succeeds and does the right thing (a check of its output).

Files a case must not change (a user's folder, an earlier run or evaluation) are snapshotted
before and compared after. Each outcome is classified automatically:

- ``clear``: the expected one-line error, naming the culprit;
- ``handled``: an input that should work did, and its check passed;
- ``unclear``: a rewardkit error that does not name the culprit, or spans several lines;
- ``raw``: a traceback or a library's exception (the CLI's "run with --debug" message);
- ``silent``: it succeeded where it should have refused, or its output is wrong;
- ``data loss``: a protected file changed or vanished.

Everything runs on the CPU on tiny models built offline (``rewardkit.testing``): a tiny SD
teacher and its student, an image folder, a 2-step ``lcd`` run; a few minutes on 2 cores::

    OMP_NUM_THREADS=1 python benchmarks/bad_inputs.py                 # the table and the counts
    python benchmarks/bad_inputs.py --only eval --json out.json       # cases whose verb/name match

The exit status is 0 when every case is clear or handled.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import socket
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

OK_CLASSES = ("clear", "handled")
CLASSES = ("clear", "handled", "unclear", "raw", "silent", "data loss")


# ---------------------------------------------------------------- running one case


@dataclass
class Result:
    """What a command or call did: exit code, its error sentence (if any), a traceback."""

    code: int
    message: str = ""
    traceback: str = ""
    check: bool | None = None  # a ``works`` case's verdict on the output


@dataclass
class Case:
    """One bad input: the verb, what is bad, what a user should get, and how to run it."""

    verb: str
    bad: str
    expect: str  # "error" or "works"
    culprit: str | None  # text the error sentence must contain
    run: Callable[["Env"], Result]


@dataclass
class Env:
    """The shared tiny assets and the folder of the case being run."""

    root: Path
    assets: dict[str, Path]
    folder: Path = Path()
    protected: dict[Path, dict[str, bytes]] = field(default_factory=dict)

    def protect(self, path: Path) -> Path:
        """Snapshot ``path`` (a file or folder); the case loses data if it changes."""
        self.protected[Path(path)] = snapshot(Path(path))
        return Path(path)

    def copy(self, name: str, as_name: str | None = None) -> Path:
        """A fresh copy of asset ``name`` in the case's folder."""
        source = self.assets[name]
        target = self.folder / (as_name or source.name)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
        return target


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (or ``path`` itself) by relative name, with its bytes."""
    if path.is_file():
        return {".": path.read_bytes()}
    if not path.is_dir():
        return {}
    return {p.relative_to(path).as_posix(): p.read_bytes()
            for p in sorted(path.rglob("*")) if p.is_file()}


def cli(*argv: Any) -> Result:
    """``rewardkit ARGV`` in process; the error sentence is the CLI's ``Error:`` line."""
    from rewardkit.cli import run

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = run([str(a) for a in argv])
        except BaseException:  # noqa: BLE001 - anything escaping the CLI is a traceback
            return Result(-1, "", traceback.format_exc())
    lines = [line for line in err.getvalue().splitlines() if line.startswith("Error: ")]
    message = lines[-1][len("Error: "):] if lines else ""
    if code and not lines:  # click's usage errors and the like print their own text
        message = " ".join(err.getvalue().split())[-300:]
    return Result(code, message)


def api(call: Callable[[], Any]) -> Result:
    """An API call: a rewardkit error is its sentence, anything else a traceback."""
    from rewardkit.errors import RewardkitError

    try:
        call()
    except RewardkitError as error:
        return Result(1, str(error))
    except Exception:  # noqa: BLE001
        return Result(1, "", traceback.format_exc())
    return Result(0)


def classify(case: Case, result: Result, lost: list[str]) -> str:
    """The outcome class of ``result`` (see the module docstring)."""
    if lost:
        return "data loss"
    if result.traceback or "run with --debug for the traceback" in result.message:
        return "raw"
    if case.expect == "works":
        if result.code != 0:
            return "unclear" if result.message else "raw"
        return "handled" if result.check is not False else "silent"
    if result.code == 0:
        return "silent"
    if not result.message or "\n" in result.message.strip():
        return "unclear"
    if case.culprit and case.culprit.lower() not in result.message.lower():
        return "unclear"
    return "clear"


# ---------------------------------------------------------------- the tiny world of the sweep


def build_assets(root: Path) -> dict[str, Path]:
    """A tiny teacher (SD and SDXL), a student, images, prompts, a saved proxy and a 2-step
    ``lcd`` run checkpointed at steps 1 and 2, plus the config files the cases start from."""
    from rewardkit.backbones.stable_diffusion import StableDiffusionBackbone
    from rewardkit.config import config_to_dict
    from rewardkit.proxies import LatentRewardModel
    from rewardkit.recipes.lcd import LCDRecipe
    from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline
    from rewardkit.testing.tiny_sdxl import build_tiny_sdxl_pipeline
    from rewardkit.testing.tiny_training import tiny_lcd_config, write_tiny_image_folder

    assets: dict[str, Path] = {}
    assets["teacher"] = build_tiny_sd_pipeline(root / "teacher")
    assets["sdxl"] = build_tiny_sdxl_pipeline(root / "sdxl")
    backbone = StableDiffusionBackbone(str(assets["teacher"]))
    assets["student"] = backbone.save_pipeline(backbone.build_student(),
                                               root / "student" / "pipeline")
    assets["data"] = write_tiny_image_folder(root / "data", count=8, size=16)
    assets["prompts"] = root / "prompts.txt"
    assets["prompts"].write_text("a red circle\na green square\n")
    assets["proxy"] = root / "proxy"
    LatentRewardModel(latent_channels=4, text_dim=32, embed_dim=16, image_widths=[8, 16],
                      text_width=16, text_heads=2).save_pretrained(assets["proxy"])
    lcd = tiny_lcd_config(assets["teacher"], assets["data"], root / "out", max_train_steps=2)
    values = {k: v for k, v in config_to_dict(lcd).items() if v is not None}
    values.pop("output_dir")
    assets["lcd.json"] = root / "lcd.json"
    assets["lcd.json"].write_text(json.dumps(values))
    tune = {k: values[k] for k in ("pretrained_teacher_model", "resolution", "train_batch_size",
                                   "seed", "report_to", "validation_steps", "checkpointing_steps",
                                   "validation_prompts", "validation_seeds")}
    tune.update(pretrained_student=str(assets["student"]), max_train_steps=1,
                train_shards_path_or_url=str(assets["prompts"]), reward="jpeg-compressibility",
                validation_inference_steps=[1], num_ddim_timesteps=50)
    assets["tune.json"] = root / "tune.json"
    assets["tune.json"].write_text(json.dumps(tune))
    pretrain = {k: values[k] for k in ("pretrained_teacher_model", "train_shards_path_or_url",
                                       "resolution", "seed", "report_to")}
    pretrain.update(train_batch_size=2, contrastive_steps=1, reward="jpeg-compressibility")
    assets["lrm.json"] = root / "lrm.json"
    assets["lrm.json"].write_text(json.dumps(pretrain))
    assets["run"] = root / "run"
    LCDRecipe(tiny_lcd_config(assets["teacher"], assets["data"], assets["run"],
                              max_train_steps=2, checkpointing_steps=1)).run(progress=False)
    assets["eval"] = root / "eval"
    result = cli("eval", assets["student"], "--prompts", assets["prompts"], "--steps", "1",
                 "--metrics", "jpeg-compressibility", "--device", "cpu", "-o", assets["eval"])
    if result.code:
        raise SystemExit(f"building the sweep's evaluation failed: {result}")
    return assets


# ---------------------------------------------------------------- the cases


CASES: list[Case] = []


def case(verb: str, bad: str, expect: str = "error", culprit: str | None = None):
    """Register the decorated ``fn(env) -> Result`` as a case."""
    def register(fn: Callable[[Env], Result]) -> Callable[[Env], Result]:
        CASES.append(Case(verb, bad, expect, culprit, fn))
        return fn
    return register


def train(env: Env, recipe: str = "lcd", *extra: Any, output: Path | None = None) -> Result:
    """``rewardkit run RECIPE`` on the tiny teacher and images (``lcd.json``) plus ``extra``."""
    out = output if output is not None else env.folder / "out"
    return cli("run", recipe, "--config", env.assets["lcd.json"], "--output_dir", out, *extra)


RG = ("--reward", "jpeg-compressibility", "--proxy", "lrm", "--proxy_params",
      json.dumps({"embed_dim": 16, "image_widths": [8, 16], "text_width": 16, "text_heads": 2}),
      "--proxy_batch_size", "2", "--vae_decode_batch_size", "4", "--proxy_eval_num_prompts", "0")

# ---- training: config values (parse time, before any model loads)

for key, value in (("learning_rate", "nan"), ("learning_rate", "inf"), ("max_grad_norm", "nan"),
                   ("huber_c", "nan"), ("w_min", "-1"), ("adam_epsilon", "-inf")):
    case("run lcd", f"--{key} {value}", culprit=key)(
        lambda env, k=key, v=value: train(env, "lcd", f"--{k}", v))

case("run rg-lcd", "--proxy_lr nan", culprit="proxy_lr")(
    lambda env: train(env, "rg-lcd", *RG, "--proxy_lr", "nan"))
case("run lcd", "--train_batch_size 0", culprit="train_batch_size")(
    lambda env: train(env, "lcd", "--train_batch_size", "0"))
case("run lcd", "--resolution 17 (not a multiple of the VAE factor)", culprit="resolution")(
    lambda env: train(env, "lcd", "--resolution", "17"))
case("run lcd", "a misspelt key --w_mni", culprit="w_mni")(
    lambda env: train(env, "lcd", "--w_mni", "3"))
case("run lcd", "--max_train_steps many", culprit="max_train_steps")(
    lambda env: train(env, "lcd", "--max_train_steps", "many"))
case("run lcd", "--mixed_precision fp8", culprit="mixed_precision")(
    lambda env: train(env, "lcd", "--mixed_precision", "fp8"))
case("run lcd", "--validation_inference_steps 0", culprit="validation_inference_steps")(
    lambda env: train(env, "lcd", "--validation_inference_steps", "0"))
case("run rg-lcd", "--reward of no registered RM", culprit="no-such-rm")(
    lambda env: train(env, "rg-lcd", *RG[2:], "--reward", "no-such-rm"))
case("run rg-lcd", "--proxy none with a non-differentiable RM", culprit="jpeg-compressibility")(
    lambda env: train(env, "rg-lcd", *RG, "--proxy", "none", "--proxy_params", "{}"))
case("run lcd", "--gold_panel of no registered RM", culprit="gold_panel")(
    lambda env: train(env, "lcd", "--gold_panel", "no-such-rm", "--validation_steps", "1"))


@case("run lcd", "a binary --config file", culprit="bad.toml")
def _(env: Env) -> Result:
    path = env.folder / "bad.toml"
    path.write_bytes(bytes(range(128, 256)) * 4)
    return cli("run", "lcd", "--config", path)


@case("run lcd", "a truncated TOML --config file", culprit="cut.toml")
def _(env: Env) -> Result:
    path = env.folder / "cut.toml"
    path.write_text('pretrained_teacher_model = "/x\nresolution = ')
    return cli("run", "lcd", "--config", path)


@case("run lcd", "a YAML --config file holding a list", culprit="list.yaml")
def _(env: Env) -> Result:
    path = env.folder / "list.yaml"
    path.write_text("- a\n- b\n")
    return cli("run", "lcd", "--config", path)


case("run lcd", "a --config file that does not exist", culprit="missing.toml")(
    lambda env: cli("run", "lcd", "--config", env.folder / "missing.toml"))

# ---- training: models and data

case("run lcd", "a teacher path that does not exist", culprit="pretrained_teacher_model")(
    lambda env: train(env, "lcd", "--pretrained_teacher_model", env.folder / "nowhere"))


@case("run lcd", "a teacher folder without its unet/", culprit="unet")
def _(env: Env) -> Result:
    teacher = env.copy("teacher")
    shutil.rmtree(teacher / "unet")
    return train(env, "lcd", "--pretrained_teacher_model", teacher)


case("run lcd", "an SDXL teacher with the default SD backbone",
     culprit="stable-diffusion-xl")(
    lambda env: train(env, "lcd", "--pretrained_teacher_model", env.assets["sdxl"]))


@case("run lcd", "a teacher whose unet weights are a planted pickle (.bin)", culprit="pickled")
def _(env: Env) -> Result:
    teacher = env.copy("teacher")
    (teacher / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (teacher / "unet" / "diffusion_pytorch_model.bin").write_bytes(PLANTED_PICKLE)
    return train(env, "lcd", "--pretrained_teacher_model", teacher)


@case("run lcd", "a teacher whose unet weights are a plain-tensor .bin (it must train)",
      expect="works")
def _(env: Env) -> Result:
    import torch
    from safetensors.torch import load_file

    teacher = env.copy("teacher")
    weights = teacher / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    weights.unlink()
    torch.save(state, teacher / "unet" / "diffusion_pytorch_model.bin")
    result = train(env, "lcd", "--pretrained_teacher_model", teacher)
    result.check = (env.folder / "out" / "pipeline" / "model_index.json").is_file()
    return result


case("run lcd", "training data that does not exist", culprit="train_shards_path_or_url")(
    lambda env: train(env, "lcd", "--train_shards_path_or_url", env.folder / "no-data"))


@case("run lcd", "an image folder with no readable image", culprit="empty-data")
def _(env: Env) -> Result:
    data = env.folder / "empty-data"
    data.mkdir()
    (data / "a.png").write_bytes(b"not a png")
    (data / "a.txt").write_text("a caption")
    return train(env, "lcd", "--train_shards_path_or_url", data)


# ---- training: output folders and resumes


@case("run lcd", "--output_dir is a teacher's unet/ (someone else's config.json)",
      culprit="config.json")
def _(env: Env) -> Result:
    teacher = env.copy("teacher")
    env.protect(teacher)
    return train(env, "lcd", "--overwrite_output_dir", output=teacher / "unet")


@case("run lcd", "a fresh run into a folder holding a run", culprit="resume_from_checkpoint")
def _(env: Env) -> Result:
    run = env.protect(env.copy("run"))
    return train(env, "lcd", output=run)


@case("run lcd", "--output_dir is a file", culprit="output_dir")
def _(env: Env) -> Result:
    path = env.folder / "a-file"
    path.write_text("mine")
    env.protect(path)
    return train(env, "lcd", output=path)


case("run lcd", "--resume_from_checkpoint with --overwrite_output_dir", culprit="contradict")(
    lambda env: train(env, "lcd", "--resume_from_checkpoint", "latest",
                      "--overwrite_output_dir"))
case("run lcd", "--resume_from_checkpoint naming no checkpoint",
     culprit="resume_from_checkpoint")(
    lambda env: train(env, "lcd", "--resume_from_checkpoint", "checkpoint-99"))


@case("run lcd", "a resume with --use_lora added", culprit="use_lora")
def _(env: Env) -> Result:
    run = env.protect(env.copy("run"))
    return train(env, "lcd", "--resume_from_checkpoint", "latest", "--max_train_steps", "3",
                 "--use_lora", "true", output=run)


@case("run lcd", "a resume from a checkpoint past --max_train_steps", culprit="max_train_steps")
def _(env: Env) -> Result:
    run = env.protect(env.copy("run"))
    return train(env, "lcd", "--resume_from_checkpoint", "latest", "--max_train_steps", "1",
                 output=run)


@case("run lcd", "a resume from a truncated model.safetensors", culprit="checkpoint-2")
def _(env: Env) -> Result:
    run = env.copy("run")
    model = run / "checkpoint-2" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:100])
    env.protect(run)
    return train(env, "lcd", "--resume_from_checkpoint", "latest", "--max_train_steps", "3",
                 output=run)


@case("run lcd", "a resume whose rank_state_0.safetensors is a planted pickle",
      culprit="rank_state_0.safetensors")
def _(env: Env) -> Result:
    run = env.copy("run")
    (run / "checkpoint-2" / "rank_state_0.safetensors").write_bytes(PLANTED_PICKLE)
    env.protect(run)
    return train(env, "lcd", "--resume_from_checkpoint", "latest", "--max_train_steps", "3",
                 output=run)


@case("run lcd", "a resume from the latest checkpoint (nothing bad: it must continue)",
      expect="works")
def _(env: Env) -> Result:
    run = env.copy("run")
    result = train(env, "lcd", "--resume_from_checkpoint", "latest", "--max_train_steps", "3",
                   output=run)
    result.check = (run / "checkpoint-2").is_dir() and (run / "pipeline").is_dir()
    return result


@case("run lcd", "the disk fills while a checkpoint is written (safetensors)",
      culprit="no space left writing checkpoint-1")
def _(env: Env) -> Result:
    from safetensors import SafetensorError

    import rewardkit.training.safe_state as safe_state

    real = safe_state.save_tensor_file

    def full(tensors, path):
        if ".checkpoint-" in str(path):
            raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: "
                                  'StorageFull, message: "No space left on device" })')
        return real(tensors, path)

    safe_state.save_tensor_file = full
    try:
        result = train(env, "lcd", "--checkpointing_steps", "1", "--max_train_steps", "1")
    finally:
        safe_state.save_tensor_file = real
    if list((env.folder / "out").glob(".checkpoint-*")):
        return Result(1, "a half-written .checkpoint-1.tmp was left behind", check=False)
    return result


# ---- the recipes on a distilled student (draft, grpo), lrm-pretrain, the guard


def tune(env: Env, recipe: str, *extra: Any) -> Result:
    """``rewardkit run RECIPE`` (draft or grpo) on the tiny student with a prompt file."""
    proxy = ("--proxy", "lrm") if recipe == "draft" else ()  # its RM is not differentiable
    return cli("run", recipe, "--config", env.assets["tune.json"], "--output_dir",
               env.folder / "out", *proxy, *extra)


for _recipe in ("draft", "grpo"):
    case(f"run {_recipe}", "nothing bad: the base config (it must train a step)", expect="works")(
        lambda env, r=_recipe: _check(tune(env, r), (env.folder / "out" / "pipeline").is_dir))
case("run grpo", "--group_size 1", culprit="group_size")(
    lambda env: tune(env, "grpo", "--group_size", "1"))
case("run grpo", "--clip_range nan", culprit="clip_range")(
    lambda env: tune(env, "grpo", "--clip_range", "nan"))
case("run grpo", "--kl_coef -1", culprit="kl_coef")(
    lambda env: tune(env, "grpo", "--kl_coef", "-1"))
case("run grpo", "--sample_steps 1 (no stochastic step)", culprit="sample_steps")(
    lambda env: tune(env, "grpo", "--sample_steps", "1"))
case("run draft", "--grad_steps abc", culprit="grad_steps")(
    lambda env: tune(env, "draft", "--grad_steps", "abc"))
case("run draft", "--pretrained_student that does not exist", culprit="pretrained_student")(
    lambda env: tune(env, "draft", "--pretrained_student", env.folder / "no-student"))
case("run draft", "--guidance_scale nan", culprit="guidance_scale")(
    lambda env: tune(env, "draft", "--guidance_scale", "nan"))
case("run draft", "--train_shards_path_or_url a missing prompt file",
     culprit="train_shards_path_or_url")(
    lambda env: tune(env, "draft", "--train_shards_path_or_url", env.folder / "none.txt"))
def pretrain(env: Env, *extra: Any) -> Result:
    """``rewardkit run lrm-pretrain`` on the tiny teacher and images."""
    return cli("run", "lrm-pretrain", "--config", env.assets["lrm.json"], "--output_dir",
               env.folder / "out", *extra)


case("run lrm-pretrain", "--preference_noise_levels [nan]", culprit="preference_noise_levels")(
    lambda env: pretrain(env, "--preference_noise_levels", "[NaN]"))
case("run lrm-pretrain", "--proxy of no registered proxy", culprit="no-such-proxy")(
    lambda env: pretrain(env, "--proxy", "no-such-proxy"))
case("run lrm-pretrain", "--eval_num_prompts -1", culprit="eval_num_prompts")(
    lambda env: pretrain(env, "--eval_num_prompts", "-1"))
case("run lcd", "--stop_on_hacking without a gold panel", culprit="gold_panel")(
    lambda env: train(env, "lcd", "--stop_on_hacking", "true"))
case("run lcd", "--guard_fd_metric of no registered metric", culprit="guard_fd_metric")(
    lambda env: train(env, "lcd", "--guard_fd_metric", "no-such-fd", "--validation_steps", "1"))
case("run lcd", "--hacking_patience 0 with a gold panel", culprit="hacking_patience")(
    lambda env: train(env, "lcd", "--gold_panel", "jpeg-compressibility", "--validation_steps",
                      "1", "--hacking_patience", "0"))


# ---- rg-lcd: saved proxies


def damaged_proxy(env: Env, damage: str) -> Result:
    proxy = env.copy("proxy")
    if damage == "truncated":
        (proxy / "proxy_config.json").write_text('{"embed_dim": 16, "ima')
    elif damage == "bin":
        (proxy / "proxy.safetensors").unlink()
        (proxy / "proxy.bin").write_bytes(PLANTED_PICKLE)
    elif damage == "pickle":
        (proxy / "proxy.safetensors").write_bytes(PLANTED_PICKLE)
    elif damage == "tower":
        config = json.loads((proxy / "proxy_config.json").read_text())
        (proxy / "proxy_config.json").write_text(json.dumps({**config, "image_tower": "vit"}))
    result = train(env, "rg-lcd", *RG, "--pretrained_proxy", proxy)
    if (env.folder / "PWNED").exists():
        return Result(0, "the planted pickle ran", check=False)
    return result


for damage, what, culprit in (
        ("truncated", "a truncated proxy_config.json", "proxy_config.json"),
        ("bin", "a proxy folder with only a pickled proxy.bin", "proxy.bin"),
        ("pickle", "a pickle named proxy.safetensors", "proxy.safetensors"),
        ("tower", "a proxy whose config says another tower than its weights",
         "proxy.safetensors")):
    case("run rg-lcd", f"--pretrained_proxy: {what}", culprit=culprit)(
        lambda env, d=damage: damaged_proxy(env, d))

# ---- eval


def evaluate(env: Env, out: Path, *extra: Any, models: tuple[Any, ...] = ()) -> Result:
    return cli("eval", *(models or (env.assets["student"],)), "--prompts", env.assets["prompts"],
               "--steps", "1", "--metrics", "jpeg-compressibility", "--device", "cpu", "-o", out,
               *extra)


@case("eval", "-o a folder of the user's own files (report.md, notes)", culprit="report.md")
def _(env: Env) -> Result:
    out = env.folder / "mine"
    out.mkdir()
    (out / "report.md").write_text("my report")
    (out / "notes.txt").write_text("my notes")
    env.protect(out)
    return evaluate(env, out)


@case("eval", "-o an earlier evaluation, run again without --resume", culprit="--resume")
def _(env: Env) -> Result:
    out = env.protect(env.copy("eval"))
    return evaluate(env, out, "--seed", "3")


@case("eval", "--resume with another --seed", culprit="seed")
def _(env: Env) -> Result:
    out = env.protect(env.copy("eval"))
    return evaluate(env, out, "--resume", "--seed", "3")


@case("eval", "--resume with another -g", culprit="guidance")
def _(env: Env) -> Result:
    out = env.protect(env.copy("eval"))
    return evaluate(env, out, "--resume", "-g", "3")


@case("eval", "--resume with another model under the same label", culprit="pipeline")
def _(env: Env) -> Result:
    out = env.protect(env.copy("eval"))
    other = env.folder / "other" / "pipeline"
    shutil.copytree(env.assets["student"], other)
    weights = other / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # other weights, same shapes
    weights.write_bytes(bytes(data))
    # the label of ".../student/pipeline" is "student"; so is that of ".../x/student/pipeline"
    renamed = env.folder / "x" / "student" / "pipeline"
    renamed.parent.mkdir(parents=True)
    shutil.move(str(other), str(renamed))
    return evaluate(env, out, "--resume", models=(renamed,))


@case("eval", "--resume with a kept sample of another size", culprit="00001.png")
def _(env: Env) -> Result:
    from PIL import Image

    out = env.copy("eval")
    Image.new("RGB", (8, 8)).save(out / "images" / "student" / "steps-1" / "00001.png")
    return evaluate(env, out, "--resume")


@case("eval", "--resume of the same evaluation (nothing bad: it must reuse the images)",
      expect="works")
def _(env: Env) -> Result:
    out = env.copy("eval")
    images = snapshot(out / "images")
    result = evaluate(env, out, "--resume")
    result.check = snapshot(out / "images") == images and (out / "results.json").is_file()
    return result


@case("eval", "--overwrite of an earlier evaluation beside a user's file", expect="works")
def _(env: Env) -> Result:
    out = env.copy("eval")
    (out / "notes.txt").write_text("mine")
    env.protect(out / "notes.txt")
    result = evaluate(env, out, "--overwrite", "--seed", "4")
    result.check = json.loads((out / "results.json").read_text())["seed"] == 4
    return result


case("eval", "-g nan", culprit="guidance")(
    lambda env: evaluate(env, env.folder / "out", "-g", "nan"))
case("eval", "--device cuda:99", culprit="--device")(
    lambda env: evaluate(env, env.folder / "out", "--device", "cuda:99"))
case("eval", "--metrics naming no metric", culprit="no-such-metric")(
    lambda env: cli("eval", env.assets["student"], "--prompts", env.assets["prompts"],
                    "--metrics", "no-such-metric", "-o", env.folder / "out"))
case("eval", "--steps one", culprit="--steps")(
    lambda env: evaluate(env, env.folder / "out", "--steps", "one"))
case("eval", "-k 0", culprit="--images-per-prompt")(
    lambda env: evaluate(env, env.folder / "out", "-k", "0"))
case("eval", "--resume with --overwrite", culprit="contradict")(
    lambda env: evaluate(env, env.folder / "out", "--resume", "--overwrite"))
case("eval", "a model folder that does not exist", culprit="nowhere")(
    lambda env: evaluate(env, env.folder / "out", models=(env.folder / "nowhere",)))
case("eval", "a --prompts file that does not exist", culprit="no-prompts.txt")(
    lambda env: cli("eval", env.assets["student"], "--prompts", env.folder / "no-prompts.txt",
                    "--metrics", "jpeg-compressibility", "-o", env.folder / "out"))


@case("eval", "a training checkpoint whose run config.json is broken", culprit="config.json")
def _(env: Env) -> Result:
    run = env.copy("run")
    (run / "config.json").write_text("{")
    return evaluate(env, env.folder / "out", models=(run / "checkpoint-2",))


# ---- sample

def sample(env: Env, model: Any, *extra: Any) -> Result:
    return cli("sample", model, "a red circle", "-n", "1", "-o", env.folder / "x.png", *extra)


case("sample", "a teacher folder sampled as a student", culprit="--teacher")(
    lambda env: sample(env, env.assets["teacher"], "--device", "cpu"))
case("sample", "-g nan", culprit="guidance")(
    lambda env: sample(env, env.assets["student"], "-g", "nan", "--device", "cpu"))
case("sample", "--device cuda:99", culprit="--device")(
    lambda env: sample(env, env.assets["student"], "--device", "cuda:99"))
case("sample", "--steps 0", culprit="steps")(
    lambda env: cli("sample", env.assets["student"], "x", "-n", "0", "--device", "cpu",
                    "-o", env.folder / "x.png"))
case("sample", "--dtype fp8", culprit="fp8")(
    lambda env: sample(env, env.assets["student"], "--dtype", "fp8", "--device", "cpu"))
case("sample", "a model folder that does not exist", culprit="nowhere")(
    lambda env: sample(env, env.folder / "nowhere", "--device", "cpu"))


@case("sample", "a pipeline whose unet is a planted pickle (.bin)", culprit="pickled")
def _(env: Env) -> Result:
    student = env.copy("student", "pickled")
    (student / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (student / "unet" / "diffusion_pytorch_model.bin").write_bytes(PLANTED_PICKLE)
    result = sample(env, student, "--device", "cpu")
    if (env.folder / "PWNED").exists():
        return Result(0, "the planted pickle ran", check=False)
    return result


@case("sample", "-o an existing file of the user's", culprit="cat.png")
def _(env: Env) -> Result:
    mine = env.folder / "cat.png"
    mine.write_bytes(b"my own picture")
    env.protect(mine)
    return cli("sample", env.assets["student"], "x", "-n", "1", "--device", "cpu", "-o", mine)


case("sample", "-o with an unknown extension", culprit="x.unknown")(
    lambda env: cli("sample", env.assets["student"], "x", "-n", "1", "--device", "cpu",
                    "-o", env.folder / "x.unknown"))
case("sample", "--height 17 (not a multiple of 8)", culprit="height")(
    lambda env: sample(env, env.assets["student"], "--height", "17", "--device", "cpu"))
case("sample", "--batch-size 0", culprit="batch")(
    lambda env: sample(env, env.assets["student"], "-b", "0", "--device", "cpu"))
case("sample", "a --prompt-file that does not exist", culprit="no-prompts.txt")(
    lambda env: cli("sample", env.assets["student"], "-f", env.folder / "no-prompts.txt",
                    "--device", "cpu", "-o", env.folder / "x.png"))


@case("sample", "an empty --prompt-file", culprit="empty.txt")
def _(env: Env) -> Result:
    (env.folder / "empty.txt").write_text("\n\n")
    return cli("sample", env.assets["student"], "-f", env.folder / "empty.txt", "--device",
               "cpu", "-o", env.folder / "x.png")


# ---- more training and eval inputs

case("run", "a recipe that is not registered", culprit="no-such-recipe")(
    lambda env: cli("run", "no-such-recipe"))
case("run lcd", "--seed -1", culprit="seed")(
    lambda env: train(env, "lcd", "--seed", "-1"))
case("run lcd", "--dataloader_num_workers -1", culprit="dataloader_num_workers")(
    lambda env: train(env, "lcd", "--dataloader_num_workers", "-1"))
case("run lcd", "--checkpoints_total_limit 0", culprit="checkpoints_total_limit")(
    lambda env: train(env, "lcd", "--checkpoints_total_limit", "0"))
case("run lcd", "--max_train_steps 0", culprit="max_train_steps")(
    lambda env: train(env, "lcd", "--max_train_steps", "0"))
case("run lcd", "--train_shards_path_or_url world:nope", culprit="world:nope")(
    lambda env: train(env, "lcd", "--train_shards_path_or_url", "world:nope"))
case("run lcd", "--backbone of no registered backbone", culprit="no-such-backbone")(
    lambda env: train(env, "lcd", "--backbone", "no-such-backbone"))
case("run lcd", "--solver_params with an unknown key", culprit="solver_params")(
    lambda env: train(env, "lcd", "--solver_params", '{"nope": 1}'))
case("run lcd", "--resume_from_checkpoint latest into an empty folder (starts a new run)",
     expect="works")(
    lambda env: _check(train(env, "lcd", "--resume_from_checkpoint", "latest",
                             "--max_train_steps", "1"),
                       (env.folder / "out" / "pipeline").is_dir))


@case("run lcd", "a corrupt webdataset shard as the only data", culprit="broken.tar")
def _(env: Env) -> Result:
    shard = env.folder / "broken.tar"
    shard.write_bytes(b"this is not a tar archive" * 40)
    return train(env, "lcd", "--train_shards_path_or_url", shard)


@case("run lcd", "a --config JSON with a list where a number goes", culprit="resolution")
def _(env: Env) -> Result:
    config = json.loads(env.assets["lcd.json"].read_text())
    path = env.folder / "c.json"
    path.write_text(json.dumps({**config, "resolution": [16, 16]}))
    return cli("run", "lcd", "--config", path, "--output_dir", env.folder / "out")


case("eval", "--batch-size 0", culprit="--batch-size")(
    lambda env: evaluate(env, env.folder / "out", "-b", "0"))
case("eval", "--limit 0", culprit="limit")(
    lambda env: evaluate(env, env.folder / "out", "--limit", "0"))
case("eval", "fid with --reference-images that do not exist", culprit="--reference-images")(
    lambda env: cli("eval", env.assets["student"], "--prompts", env.assets["prompts"],
                    "--metrics", "world-fd", "--reference-images", env.folder / "no-reals",
                    "--steps", "1", "--device", "cpu", "-o", env.folder / "out"))
case("eval", "a --teacher folder that does not exist", culprit="no-teacher")(
    lambda env: evaluate(env, env.folder / "out", "--teacher", env.folder / "no-teacher",
                         "--teacher-steps", "1"))
case("eval", "--dtype fp8", culprit="fp8")(
    lambda env: evaluate(env, env.folder / "out", "--dtype", "fp8"))
case("eval", "--prompts-param without =", culprit="--prompts-param")(
    lambda env: evaluate(env, env.folder / "out", "--prompts-param", "oops"))


@case("eval", "-o is a file", culprit="--output")
def _(env: Env) -> Result:
    path = env.folder / "a-file"
    path.write_text("mine")
    env.protect(path)
    return evaluate(env, path)


@case("eval", "a training checkpoint with a truncated model.safetensors",
      culprit="model.safetensors")
def _(env: Env) -> Result:
    run = env.copy("run")
    model = run / "checkpoint-2" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:64])
    return evaluate(env, env.folder / "out", models=(run / "checkpoint-2",))


# ---- data encode, demo, rewards, the host

@case("data encode", "an output folder of the user's files", culprit="notes.txt")
def _(env: Env) -> Result:
    out = env.folder / "latents"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    env.protect(out)
    return cli("data", "encode", env.assets["data"], out, "--teacher", env.assets["teacher"],
               "--resolution", "16")


@case("data encode", "an output folder holding an encoded dataset", culprit="manifest.json")
def _(env: Env) -> Result:
    out = env.folder / "latents"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    env.protect(out)
    return cli("data", "encode", env.assets["data"], out, "--teacher", env.assets["teacher"],
               "--resolution", "16")


case("data encode", "--latent-dtype int8", culprit="--latent-dtype")(
    lambda env: cli("data", "encode", env.assets["data"], env.folder / "l", "--teacher",
                    env.assets["teacher"], "--latent-dtype", "int8"))
case("data encode", "a teacher that does not exist", culprit="no-teacher")(
    lambda env: cli("data", "encode", env.assets["data"], env.folder / "l", "--teacher",
                    env.folder / "no-teacher", "--resolution", "16"))
case("data encode", "--resolution 0", culprit="--resolution")(
    lambda env: cli("data", "encode", env.assets["data"], env.folder / "l", "--teacher",
                    env.assets["teacher"], "--resolution", "0"))
case("data encode", "a source that does not exist", culprit="no-images")(
    lambda env: cli("data", "encode", env.folder / "no-images", env.folder / "l", "--teacher",
                    env.assets["teacher"], "--resolution", "16"))


@case("demo", "a --port already in use", culprit="--port")
def _(env: Env) -> Result:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        return cli("demo", env.assets["student"], "--port", server.getsockname()[1])


case("demo", "--port 70000", culprit="--port")(
    lambda env: cli("demo", env.assets["student"], "--port", "70000"))
case("rewards score", "--param with an unknown parameter", culprit="nope")(
    lambda env: cli("rewards", "score", first_image(env), "-p", "x", "-r",
                    "jpeg-compressibility", "--param", "nope=1"))
case("rewards score", "two prompts for three images", culprit="prompt")(
    lambda env: cli("rewards", "score", *sorted(env.assets["data"].glob("*.png"))[:3],
                    "-p", "a", "-p", "b", "-r", "jpeg-compressibility"))
case("rewards score", "--reward of no registered RM", culprit="no-such-rm")(
    lambda env: cli("rewards", "score", first_image(env), "-p", "x", "-r",
                    "no-such-rm"))
case("rewards score", "an image file that does not exist", culprit="missing.png")(
    lambda env: cli("rewards", "score", env.folder / "missing.png", "-p", "x", "-r",
                    "jpeg-compressibility"))


@case("rewards score", "a file that is not an image", culprit="fake.png")
def _(env: Env) -> Result:
    (env.folder / "fake.png").write_text("not an image")
    return cli("rewards", "score", env.folder / "fake.png", "-p", "x", "-r",
               "jpeg-compressibility")


@case("world build", "--out a folder holding the user's own teacher/", culprit="teacher")
def _(env: Env) -> Result:
    out = env.folder / "models"
    (out / "teacher").mkdir(parents=True)
    (out / "teacher" / "model_index.json").write_text("{}")
    env.protect(out)
    return cli("world", "build", "--size", "tiny", "--out", out, "--no-progress")


case("world build", "--minutes nan", culprit="--minutes")(
    lambda env: cli("world", "build", "--size", "tiny", "--minutes", "nan", "--out",
                    env.folder / "w", "--no-progress"))
case("world build", "--size huge", culprit="--size")(
    lambda env: cli("world", "build", "--size", "huge", "--out", env.folder / "w"))
case("describe", "a component that is not registered", culprit="no-such-rm")(
    lambda env: cli("describe", "reward", "no-such-rm"))


@case("API", "a reward model that returns NaN", culprit="test-nan")
def _(env: Env) -> Result:
    import torch

    from rewardkit.rewards import RewardModel

    class NaNReward(RewardModel):
        name = "test-nan"

        def score(self, images, prompts):
            return images.mean((1, 2, 3)) * float("nan")

    return api(lambda: NaNReward()(torch.rand(2, 3, 8, 8), ["a", "b"]))


@case("API", "a plugin whose hook raises (the rest keeps working)", expect="works")
def _(env: Env) -> Result:
    from rewardkit.hookspecs import hookimpl
    from rewardkit.plugins import load_host

    class Broken:
        @hookimpl
        def register_reward_models(self, register):
            raise ImportError("No module named 'some_heavy_dependency'")

    host = load_host(extra_plugins=[("broken-example", Broken())])
    result = api(lambda: host.get("reward", "jpeg-compressibility"))
    info = host.plugins.get("broken-example")
    result.check = info is not None and info.status == "broken" and any(
        "some_heavy_dependency" in error for error in info.errors)
    return result


def first_image(env: Env) -> Path:
    return sorted(env.assets["data"].glob("*.png"))[0]


def _check(result: Result, check: Callable[[], bool]) -> Result:
    result.check = bool(check())
    return result


PLANTED_PICKLE = b""


# ---- keys and verbs of the newer issues: time budgets, regularisers, remote RMs, votes

case("run lcd", "--max_train_minutes nan", culprit="max_train_minutes")(
    lambda env: train(env, "lcd", "--max_train_minutes", "nan"))
case("run lcd", "--train_time_clock sundial", culprit="train_time_clock")(
    lambda env: train(env, "lcd", "--train_time_clock", "sundial"))
case("run rg-lcd", "--pretrained_student that does not exist", culprit="pretrained_student")(
    lambda env: train(env, "rg-lcd", *RG, "--pretrained_student", env.folder / "no-student"))
case("run draft", "--random_stop with --grad_steps 'last 2'", culprit="random_stop")(
    lambda env: tune(env, "draft", "--sample_steps", "2", "--random_stop", "true",
                     "--grad_steps", "last 2"))
case("run draft", "--lcd_weight -1", culprit="lcd_weight")(
    lambda env: tune(env, "draft", "--lcd_weight", "-1"))
case("run grpo", "--rollout_chunks 0", culprit="rollout_chunks")(
    lambda env: tune(env, "grpo", "--rollout_chunks", "0"))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


case("run rg-lcd", "--reward remote at a URL where no server listens", culprit="127.0.0.1")(
    lambda env: train(env, "rg-lcd", *RG[2:], "--reward", "remote", "--reward_params",
                      json.dumps({"url": f"http://127.0.0.1:{_free_port()}", "timeout": 2,
                                  "retries": 0})))
case("run rg-lcd", "--reward remote without a url", culprit="url")(
    lambda env: train(env, "rg-lcd", *RG[2:], "--reward", "remote", "--reward_params", "{}"))
case("serve-reward", "an RM that is not registered", culprit="no-such-rm")(
    lambda env: cli("serve-reward", "no-such-rm", "--port", "0"))
case("serve-reward", "--host 0.0.0.0 without a token", culprit="token")(
    lambda env: cli("serve-reward", "jpeg-compressibility", "--host", "0.0.0.0", "--port", "0"))
case("serve-reward", "--reward_params that are not JSON", culprit="reward_params")(
    lambda env: cli("serve-reward", "jpeg-compressibility", "--reward_params", "{oops",
                    "--port", "0"))
case("vote", "a model folder that does not exist", culprit="no-model")(
    lambda env: cli("vote", "study", env.folder / "no-model", env.assets["teacher"],
                    "--prompts", env.assets["prompts"], "-o", env.folder / "votes.jsonl"))
case("vote report", "a votes file that does not exist", culprit="votes.jsonl")(
    lambda env: cli("vote", "report", env.folder / "votes.jsonl"))


@case("vote report", "a votes file of garbage lines only", culprit="votes.jsonl")
def _(env: Env) -> Result:
    path = env.folder / "votes.jsonl"
    path.write_text("not json\n{\"half\": \n")
    env.protect(path)
    return cli("vote", "report", path)


def planted_pickle(marker: Path) -> bytes:
    """A pickle that, if anything unpickled it, would create ``marker``."""
    import pickle

    class Plant:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    return pickle.dumps({"planted": Plant()})


# ---------------------------------------------------------------- the sweep


def run_sweep(cases: list[Case], root: Path, progress: bool = True) -> list[dict[str, Any]]:
    """Build the assets under ``root``, run ``cases``; one row per case."""
    global PLANTED_PICKLE

    started = time.perf_counter()
    assets = build_assets(root / "assets")
    if progress:
        print(f"assets built in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    rows = []
    for number, item in enumerate(cases, 1):
        folder = root / f"case-{number:03d}"
        folder.mkdir(parents=True)
        env = Env(root, assets, folder)
        PLANTED_PICKLE = planted_pickle(folder / "PWNED")
        began = time.perf_counter()
        try:
            result = item.run(env)
        except Exception:  # noqa: BLE001 - a case that breaks the harness is a traceback too
            result = Result(-1, "", traceback.format_exc())
        lost = [str(path) for path, before in env.protected.items() if snapshot(path) != before]
        if (folder / "PWNED").exists():
            result.check = False
        outcome = classify(item, result, lost)
        if (folder / "PWNED").exists():
            outcome = "silent"  # a planted pickle ran: the worst silent failure
        rows.append({"number": number, "verb": item.verb, "bad": item.bad,
                     "expect": item.expect, "culprit": item.culprit, "outcome": outcome,
                     "message": result.message or (result.traceback.strip().splitlines() or
                                                   [""])[-1],
                     "lost": lost, "seconds": round(time.perf_counter() - began, 2)})
        if progress:
            print(f"{number:3d} {outcome:9s} {item.verb}: {item.bad}", file=sys.stderr)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The outcomes as a Markdown table, then the count per class."""
    lines = ["| # | verb | bad input | expected | outcome | what the user sees |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        seen = row["message"].replace("|", "\\|")
        seen = seen if len(seen) <= 110 else seen[:107] + "..."
        lines.append(f"| {row['number']} | {row['verb']} | {row['bad'].replace('|', '/')} | "
                     f"{row['expect']} | {row['outcome']} | {seen} |")
    counts = {name: sum(row["outcome"] == name for row in rows) for name in CLASSES}
    lines += ["", f"{len(rows)} cases: " + ", ".join(f"{n} {name}" for name, n in counts.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=None,
                        help="Run only cases whose verb or description contains this text.")
    parser.add_argument("--json", type=Path, default=None, help="Write the rows as JSON here.")
    parser.add_argument("--keep", type=Path, default=None,
                        help="Work in this folder and keep it (default: a temporary folder).")
    parser.add_argument("--list", action="store_true", help="List the cases and exit.")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no case may reach the network
    os.environ.setdefault("TQDM_DISABLE", "1")
    cases = [c for c in CASES if args.only is None
             or args.only.lower() in f"{c.verb} {c.bad}".lower()]
    if args.list:
        for number, item in enumerate(cases, 1):
            print(f"{number:3d} [{item.expect}] {item.verb}: {item.bad}")
        return 0
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    with contextlib.ExitStack() as stack:
        root = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        root.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        rows = run_sweep(cases, root)
        took = time.perf_counter() - started
    print(table(rows))
    print(f"\n({took:.0f}s on {torch.get_num_threads()} thread(s))")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "seconds": took}, indent=2))
    return 0 if all(row["outcome"] in OK_CLASSES for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
