"""The ``lcd`` recipe end to end on the tiny offline SD pipeline (8x8 latents, batch 2-4, CPU)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rewardkit.recipes.lcd import LCDRecipe, StepOutputs
from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline
from rewardkit.training.checkpoint import list_checkpoints, resolve_resume
from rewardkit.training.errors import TrainingError
from rewardkit.training.metrics import read_metrics
from rewardkit.testing.tiny_training import tiny_lcd_config, write_tiny_image_folder


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("lcd")
    return {"teacher": build_tiny_sd_pipeline(root / "teacher"),
            "data": write_tiny_image_folder(root / "data", count=8, size=16)}


def config(assets, out, **overrides):
    return tiny_lcd_config(assets["teacher"], assets["data"], out, **overrides)


def student_state(output_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(output_dir / f"checkpoint-{step}" / "model.safetensors"))


def test_loss_falls_on_a_fixed_batch(assets, tmp_path):
    recipe = LCDRecipe(config(assets, tmp_path, learning_rate=3e-4, train_batch_size=4))
    recipe.setup()
    batch = next(recipe.batches)
    recipe.batches = itertools.repeat(batch)
    losses = []
    for _ in range(25):
        recipe.generator.manual_seed(123)  # same n, w and noise every step: a fixed problem
        losses.append(recipe.train_step()["lcd_loss"])
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0], losses
    assert sum(losses[-5:]) / 5 < 0.2 * max(losses[:5]), losses


def test_step_outputs_carry_the_student_graph(assets, tmp_path):
    recipe = LCDRecipe(config(assets, tmp_path))
    recipe.setup()
    step = recipe.forward(next(recipe.batches))
    assert isinstance(step, StepOutputs)
    assert step.student_x0.requires_grad and not step.target_x0.requires_grad
    assert step.student_x0.shape == step.latents.shape == (2, 4, 8, 8)
    assert ((step.w >= 5) & (step.w <= 15)).all()
    assert (step.target_timesteps == (step.timesteps - 20).clamp(min=0)).all()
    # the reward term of rg-lcd back-propagates through the same tensor the LCD loss uses
    step.student_x0.mean().backward()
    grads = [p.grad for p in recipe.unwrapped_student.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_run_saves_a_pipeline_that_samples_with_lcm_scheduler(assets, tmp_path):
    from diffusers import DiffusionPipeline, LCMScheduler, UNet2DConditionModel

    out = LCDRecipe(config(assets, tmp_path, max_train_steps=4, checkpointing_steps=1,
                           checkpoints_total_limit=2, validation_steps=2)).run(progress=False)
    assert [step for step, _ in list_checkpoints(out)] == [3, 4]
    assert not list(out.glob(".checkpoint-*"))
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(r["lcd_loss"] > 0 and r["lr"] == 1e-4 and r["step_time"] > 0 for r in rows)

    from PIL import Image

    grid = Image.open(out / "validation" / "step-4.png")
    assert grid.size == (3 * 17 - 1, 2 * 17 - 1)  # 3 step counts x (2 prompts x 1 seed) of 16 px
    assert (out / "validation" / "step-2.png").is_file()

    pipe = DiffusionPipeline.from_pretrained(out / "pipeline")
    assert isinstance(pipe.scheduler, LCMScheduler)
    assert pipe.unet.config.time_cond_proj_dim == 32
    trained = student_state(out, 4)
    for name, value in pipe.unet.state_dict().items():
        assert torch.equal(value, trained[name]), name
    target = load_file(str(out / "checkpoint-4" / "target.safetensors"))
    exported = UNet2DConditionModel.from_pretrained(out / "pipeline", subfolder="unet_target")
    for name, value in exported.state_dict().items():
        assert torch.equal(value, target[name]), name
    assert any(not torch.equal(target[n], trained[n]) for n in target)  # EMA != online student
    for steps in (1, 2, 4):
        images = pipe("a photo of a red circle", num_inference_steps=steps, guidance_scale=7.5,
                      generator=torch.Generator().manual_seed(0), output_type="np").images
        assert images.shape == (1, 16, 16, 3)
        assert images.min() >= 0 and images.max() <= 1


def test_lcm_lora_style_output_loads_onto_the_teacher_with_plain_diffusers(assets, tmp_path):
    """--use_lora --unet_time_cond_proj_dim none: a standard LoRA that load_lora_weights applies
    exactly (no guidance embedding to lose), sampling what the merged pipeline samples."""
    from diffusers import DiffusionPipeline, LCMScheduler

    out = LCDRecipe(config(assets, tmp_path, use_lora=True, lora_rank=4,
                           unet_time_cond_proj_dim=None, learning_rate=1e-2,
                           max_train_steps=3)).run(progress=False)
    folder = out / "pipeline"
    assert (folder / "pytorch_lora_weights.safetensors").is_file()
    assert not (folder / "lora_w_embedded").exists()
    merged = DiffusionPipeline.from_pretrained(folder)
    assert merged.unet.config.time_cond_proj_dim is None
    teacher = DiffusionPipeline.from_pretrained(assets["teacher"])
    teacher.load_lora_weights(str(folder))
    teacher.scheduler = LCMScheduler.from_config(merged.scheduler.config)
    plain = DiffusionPipeline.from_pretrained(assets["teacher"])
    plain.scheduler = LCMScheduler.from_config(merged.scheduler.config)
    for steps in (1, 2, 4):
        def sample(pipe):
            return pipe("a photo of a red circle", num_inference_steps=steps, guidance_scale=1.0,
                        generator=torch.Generator().manual_seed(0), output_type="np").images
        expected = sample(merged)
        assert abs(sample(teacher) - expected).max() < 1e-4, steps
        assert abs(sample(plain) - expected).max() > 1e-3, steps  # the LoRA changed the images


class CrashAt(LCDRecipe):
    """Raises inside the step after optimiser step ``crash_step`` (an interrupted run)."""

    crash_step = 3

    def after_step(self) -> dict[str, float]:
        if self.global_step + 1 == self.crash_step:
            raise KeyboardInterrupt("simulated interruption")
        return super().after_step()


def test_interrupted_and_resumed_run_ends_with_the_same_weights(assets, tmp_path):
    common = dict(max_train_steps=4, checkpointing_steps=2, gradient_accumulation_steps=2,
                  lr_scheduler="linear", lr_warmup_steps=1)
    straight = LCDRecipe(config(assets, tmp_path / "a", **common)).run(progress=False)

    with pytest.raises(KeyboardInterrupt):
        CrashAt(config(assets, tmp_path / "b", **common)).run(progress=False)
    assert [s for s, _ in list_checkpoints(tmp_path / "b")] == [2]
    resumed_recipe = LCDRecipe(config(assets, tmp_path / "b", resume_from_checkpoint="latest",
                                      **common))
    resumed = resumed_recipe.run(progress=False)
    assert resumed_recipe.global_step == 4

    for name in ("model.safetensors", "target.safetensors"):
        a = load_file(str(straight / "checkpoint-4" / name))
        b = load_file(str(resumed / "checkpoint-4" / name))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    # and the run did train: the student moved away from the teacher-initialised weights
    first = load_file(str(straight / "checkpoint-2" / "model.safetensors"))
    assert any(not torch.equal(first[k], a[k]) for k in a)
    rows_a = read_metrics(straight / "metrics.jsonl")
    rows_b = [r for r in read_metrics(resumed / "metrics.jsonl") if r["step"] in (3, 4)][-2:]
    assert [r["lcd_loss"] for r in rows_a[2:]] == [r["lcd_loss"] for r in rows_b]


class FailingSave(LCDRecipe):
    """An extension whose checkpoint file cannot be written (a crash mid-checkpoint)."""

    def save_files(self, checkpoint_dir: Path) -> None:
        super().save_files(checkpoint_dir)
        (checkpoint_dir / "half-written.bin").write_bytes(b"x")
        if self.global_step == 4:
            raise OSError("disk full")


def test_a_crash_while_saving_leaves_the_previous_checkpoint_usable(assets, tmp_path):
    from rewardkit.training.checkpoint import CheckpointWriteError

    with pytest.raises(CheckpointWriteError, match=r"\(disk full\) writing checkpoint-4 in .*; "
                                                   r"the previous checkpoint checkpoint-2 is intact"):
        FailingSave(config(assets, tmp_path, max_train_steps=4,
                           checkpointing_steps=2)).run(progress=False)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2]
    assert resolve_resume("latest", tmp_path) == tmp_path / "checkpoint-2"
    assert not (tmp_path / "checkpoint-4").exists()
    assert not (tmp_path / ".checkpoint-4.tmp").exists()  # the half-written one is removed
    state = json.loads((tmp_path / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    # the surviving checkpoint resumes
    recipe = LCDRecipe(config(assets, tmp_path, max_train_steps=3,
                              resume_from_checkpoint="latest"))
    recipe.run(progress=False)
    assert recipe.global_step == 3


class NaNReward(LCDRecipe):
    def losses(self, batch) -> dict[str, torch.Tensor]:
        terms = super().losses(batch)
        value = self.step.student_x0.mean() * (float("nan") if self.global_step >= 2 else 0.0)
        return {**terms, "reward_loss": value}


def test_a_non_finite_extra_loss_stops_the_run_and_keeps_checkpoints(assets, tmp_path):
    with pytest.raises(TrainingError, match="reward_loss"):
        NaNReward(config(assets, tmp_path, max_train_steps=4,
                         checkpointing_steps=1)).run(progress=False)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1, 2]
    assert "reward_loss" in read_metrics(tmp_path / "metrics.jsonl")[0]
    assert not (tmp_path / "pipeline").exists()


def test_lora_run_saves_lora_weights(assets, tmp_path):
    out = LCDRecipe(config(assets, tmp_path, use_lora=True, lora_rank=4, max_train_steps=2,
                           checkpointing_steps=2)).run(progress=False)
    # the test student is w-conditioned: its LoRA sits apart, with the guidance embedding
    assert (out / "pipeline" / "lora_w_embedded" / "pytorch_lora_weights.safetensors").is_file()
    assert (out / "pipeline" / "lora_w_embedded" / "guidance_embedding.safetensors").is_file()
    assert not (out / "checkpoint-2" / "target.safetensors").exists()
    assert not (out / "pipeline" / "unet_target").exists()  # LoRA: the target is the student
    saved = load_file(str(out / "checkpoint-2" / "model.safetensors"))
    assert any("lora_" in key for key in saved)


def test_v_prediction_teacher_trains(tmp_path):
    teacher = build_tiny_sd_pipeline(tmp_path / "teacher", prediction_type="v_prediction")
    data = write_tiny_image_folder(tmp_path / "data", count=4, size=16)
    recipe = LCDRecipe(tiny_lcd_config(teacher, data, tmp_path / "out", max_train_steps=2,
                                       loss_type="l2"))
    recipe.run(progress=False)
    assert recipe.backbone.prediction_type == "v_prediction"
    rows = read_metrics(tmp_path / "out" / "metrics.jsonl")
    assert len(rows) == 2 and all(r["lcd_loss"] > 0 for r in rows)


def test_cli_run_lcd_end_to_end(assets, tmp_path):
    from rewardkit.cli import run as cli_run

    out = tmp_path / "cli-out"
    code = cli_run(["run", "lcd", "--pretrained_teacher_model", str(assets["teacher"]),
                    "--train_shards_path_or_url", str(assets["data"]), "--output_dir", str(out),
                    "--max_train_steps", "4", "--resolution", "16", "--train_batch_size", "2",
                    "--unet_time_cond_proj_dim", "32", "--checkpointing_steps", "2",
                    "--validation_steps", "4", "--validation_prompts", "a red circle",
                    "--validation_inference_steps", "1,2", "--report_to", "none", "--seed", "1",
                    "--w_min", "3"])
    assert code == 0
    assert (out / "pipeline" / "model_index.json").is_file()
    assert [s for s, _ in list_checkpoints(out)] == [2, 4]
    assert (out / "validation" / "step-4.png").is_file()
    assert json.loads((out / "config.json").read_text())["w_min"] == 3.0
    assert len(read_metrics(out / "metrics.jsonl")) == 4


def test_metrics_describe_one_run_after_a_restart(assets, tmp_path):
    LCDRecipe(config(assets, tmp_path, max_train_steps=3, checkpointing_steps=2)).run(progress=False)
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == 3
    # resuming from checkpoint-2 drops the rows of step 3, which is trained again
    LCDRecipe(config(assets, tmp_path, max_train_steps=3,
                     resume_from_checkpoint="latest")).run(progress=False)
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3]


def test_solver_and_grid_are_pluggable_from_the_config(assets, tmp_path):
    recipe = LCDRecipe(config(assets, tmp_path, solver="heun", num_ddim_timesteps=10,
                              max_train_steps=1))
    recipe.run(progress=False)
    assert recipe.solver.name == "heun" and recipe.solver.skip == 100
    step = recipe.forward(next(recipe.batches))
    assert set(step.timesteps.tolist()) <= set(range(99, 1000, 100))


def test_training_from_pre_encoded_latents_skips_the_vae_encoder(assets, tmp_path, monkeypatch):
    from rewardkit.backbones.stable_diffusion import StableDiffusionBackbone
    from rewardkit.data.encode import encode_dataset

    backbone = StableDiffusionBackbone(str(assets["teacher"]))
    encode_dataset(assets["data"], tmp_path / "latents", backbone, resolution=16, batch_size=4,
                   progress=False)

    def no_encoding(*args, **kwargs):  # pragma: no cover - reaching it is the failure
        raise AssertionError("the VAE encoder ran although the data are latents")

    monkeypatch.setattr(StableDiffusionBackbone, "encode_images", no_encoding)
    recipe = LCDRecipe(tiny_lcd_config(assets["teacher"], tmp_path / "latents", tmp_path / "out",
                                       max_train_steps=2))
    recipe.run(progress=False)
    assert recipe.loader.batch_key == "latents"
    assert len(read_metrics(tmp_path / "out" / "metrics.jsonl")) == 2


def test_tensorboard_gets_the_loss_terms_and_the_validation_images(assets, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = LCDRecipe(config(assets, tmp_path, report_to="tensorboard", max_train_steps=2,
                           validation_steps=2)).run(progress=False)
    boards = []
    for folder in sorted({p.parent for p in (out / "logs").rglob("events.out.tfevents.*")}):
        boards.append(EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0}))
        boards[-1].Reload()
    # accelerate writes the config's hparams to an event file of its own; the run's is the other
    board = next((b for b in boards if "lcd_loss" in b.Tags()["scalars"]), None)
    assert board is not None, [b.Tags() for b in boards]
    tags = board.Tags()
    assert {"lcd_loss", "lr", "step_time"} <= set(tags["scalars"]), tags
    assert [e.step for e in board.Scalars("lcd_loss")] == [1, 2]
    rows = read_metrics(out / "metrics.jsonl")
    assert [e.value for e in board.Scalars("lcd_loss")] == pytest.approx([r["lcd_loss"] for r in rows])
    images = [tag for tag in tags["images"] if tag.startswith("validation")]
    assert images, tags["images"]
    logged = board.Images(images[0])
    assert [e.step for e in logged] == [2]  # the validation step
    assert (logged[-1].width, logged[-1].height) == (3 * 17 - 1, 2 * 17 - 1)  # the saved grid


def test_a_missing_tracker_package_is_named_with_what_to_do(monkeypatch, caplog):
    import importlib.util

    from rewardkit.training.runtime import available_trackers

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("tensorboard", "tensorboardX") else real(name, *a))
    with caplog.at_level("WARNING"):
        assert available_trackers("tensorboard") == []
    assert "tensorboard package is not installed" in caplog.text
    assert "pip install tensorboard" in caplog.text and "--report_to none" in caplog.text


def test_channels_last_trains_the_same_student(assets, tmp_path):
    losses = {}
    for flag in (False, True):
        recipe = LCDRecipe(config(assets, tmp_path / str(flag), max_train_steps=2,
                                  channels_last=flag))
        recipe.run(progress=False)
        losses[flag] = [r["lcd_loss"] for r in read_metrics(tmp_path / str(flag) / "metrics.jsonl")]
        if flag:
            conv = next(m for m in recipe.unwrapped_student.modules()
                        if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
            assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert losses[True] == pytest.approx(losses[False], rel=1e-3)


def test_compile_trains_the_same_student_and_keeps_checkpoint_names(assets, tmp_path):
    """``compile`` (aot_eager: the graph capture and autograd of torch.compile without inductor's
    code generation, so it runs in seconds on a CPU) gives eager's losses and weights."""
    losses, states = {}, {}
    for flag in (False, True):
        out = tmp_path / str(flag)
        recipe = LCDRecipe(config(assets, out, max_train_steps=2, checkpointing_steps=2,
                                  compile=flag, compile_backend="aot_eager"))
        recipe.run(progress=False)
        losses[flag] = [r["lcd_loss"] for r in read_metrics(out / "metrics.jsonl")]
        states[flag] = student_state(out, 2)
        if flag:
            assert all(u._compiled_call_impl is not None for u in
                       (recipe.unwrapped_student, recipe.target, recipe.backbone.unet))
    assert losses[True] == pytest.approx(losses[False], rel=1e-6, abs=1e-9)
    assert states[True].keys() == states[False].keys()  # no _orig_mod. prefix
    for name, tensor in states[False].items():
        torch.testing.assert_close(states[True][name], tensor, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("values, culprit", [
    ({"compile_backend": "nope"}, "compile_backend must be one of"),
    ({"compile_mode": "fastest"}, "compile_mode must be one of"),
    ({"compile_backend": "aot_eager", "compile_mode": "max-autotune"}, "compile_mode is an inductor option"),
])
def test_compile_keys_are_checked_before_loading(assets, tmp_path, values, culprit):
    from rewardkit.errors import ConfigError

    with pytest.raises(ConfigError, match=culprit):
        LCDRecipe(config(assets, tmp_path, compile=True, **values))


def test_compile_turns_off_inductors_layout_optimisation_only_where_torch_2_13_breaks_it():
    from rewardkit.training.compile import compile_options, layout_bug

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert layout_bug(cpu, "2.13.0+cpu") and not layout_bug(cpu, "2.14.1+cu130")
    assert not layout_bug(cuda, "2.13.0")
    options = compile_options("inductor", None, cpu)
    if layout_bug(cpu):  # this torch
        assert options == {"backend": "inductor", "options": {"layout_optimization": False}}
        # a mode's own options travel with it (torch.compile takes mode or options, not both)
        tuned = compile_options("inductor", "max-autotune-no-cudagraphs", cpu)["options"]
        assert tuned["max_autotune"] is True and tuned["layout_optimization"] is False
    assert compile_options("inductor", "reduce-overhead", cuda) == {
        "backend": "inductor", "mode": "reduce-overhead"}
    assert compile_options("aot_eager", None, cpu) == {"backend": "aot_eager", "mode": None}


def test_max_train_minutes_stops_with_its_sentence_saves_and_a_resume_keeps_the_budget(
        assets, tmp_path, capsys):
    """A budget spent after the first step: the run stops there, says so, and still saves its
    pipeline; the checkpoint carries the time spent, so a resume does not start a new budget."""
    out = LCDRecipe(config(assets, tmp_path, max_train_steps=4, checkpointing_steps=1,
                           max_train_minutes=1e-9)).run(progress=False)
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1]
    assert "max_train_minutes (1e-09) spent after step 1" in capsys.readouterr().out
    assert (out / "pipeline" / "model_index.json").is_file()
    spent = json.loads((out / "checkpoint-1" / "trainer_state.json").read_text())["train_seconds"]
    assert spent > 0
    resumed = LCDRecipe(config(assets, tmp_path, max_train_steps=4, checkpointing_steps=1,
                               max_train_minutes=1e-9, resume_from_checkpoint="latest"))
    resumed.run(progress=False)
    assert resumed.global_step == 2  # one more step, then the (already spent) budget stops it
    assert resumed.train_seconds > spent
    # what the progress line's ETA is capped by: the budget's seconds left (none are)
    assert resumed.budget_left() == pytest.approx(60 * 1e-9 - resumed.train_seconds)
    assert resumed.budget_left() < 0
    cpu = LCDRecipe(config(assets, tmp_path / "cpu", max_train_steps=4, max_train_minutes=1e-9,
                           train_time_clock="process"))
    cpu.run(progress=False)
    assert cpu.global_step == 1 and "process clock" in capsys.readouterr().out
    from rewardkit.errors import ConfigError

    with pytest.raises(ConfigError, match="train_time_clock"):
        config(assets, tmp_path / "bad", train_time_clock="sundial")


def test_a_distilled_student_is_where_lcd_starts_when_given(assets, tmp_path):
    """``pretrained_student``: the student and its EMA target start from a saved student, not
    the teacher; a student with another guidance embedding is refused by name."""
    from diffusers import UNet2DConditionModel
    from rewardkit.errors import ConfigError

    first = LCDRecipe(config(assets, tmp_path / "a", max_train_steps=2)).run(progress=False)
    saved = UNet2DConditionModel.from_pretrained(first / "pipeline", subfolder="unet").state_dict()
    recipe = LCDRecipe(config(assets, tmp_path / "b", pretrained_student=str(first / "pipeline")))
    recipe.setup()
    for name, value in recipe.unwrapped_student.state_dict().items():
        assert torch.equal(value, saved[name]), name
        assert torch.equal(recipe.target.state_dict()[name], saved[name]), name
    with pytest.raises(ConfigError, match="guidance embedding of size 32.*unet_time_cond_proj_dim"):
        LCDRecipe(config(assets, tmp_path / "c", pretrained_student=str(first / "pipeline"),
                         unet_time_cond_proj_dim=16)).setup()
    with pytest.raises(ConfigError, match="pretrained_student"):
        config(assets, tmp_path / "d", pretrained_student=str(tmp_path / "missing"))
