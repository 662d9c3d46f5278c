"""A new run never destroys an old one: fresh runs into a used output folder are refused before
anything is written, ``overwrite_output_dir`` removes only the old run, resumes are checked."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from rewardkit.errors import ConfigError, DataError
from rewardkit.recipes.lcd import LCDRecipe
from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline
from rewardkit.recipes.lcd_config import LCDConfig
from rewardkit.training.metrics import read_metrics
from rewardkit.training.output_dir import check_output_dir, clear_run, run_entries
from rewardkit.testing.tiny_training import tiny_lcd_config, write_tiny_image_folder


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("output-dir")
    teacher = build_tiny_sd_pipeline(root / "teacher")
    data = write_tiny_image_folder(root / "data", count=8, size=16)
    other = write_tiny_image_folder(root / "other", count=6, size=16, seed=3)
    finished = root / "finished"
    LCDRecipe(tiny_lcd_config(teacher, data, finished, max_train_steps=4,
                              checkpointing_steps=2)).run(progress=False)
    return {"teacher": teacher, "data": data, "other": other, "finished": finished}


def used_folder(assets, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(assets["finished"], out)
    return out


def config(assets, out, **overrides) -> LCDConfig:
    return tiny_lcd_config(assets["teacher"], overrides.pop("data", assets["data"]), out,
                           **overrides)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_fresh_run_into_a_used_folder_is_refused_before_anything_is_written(assets, tmp_path):
    out = used_folder(assets, tmp_path)
    before = snapshot(out)
    with pytest.raises(ConfigError) as raised:
        LCDRecipe(config(assets, out, max_train_steps=2, checkpointing_steps=2)).run(progress=False)
    message = str(raised.value)
    assert str(out) in message and "--resume_from_checkpoint latest" in message
    assert "--overwrite_output_dir" in message
    assert snapshot(out) == before  # not one byte changed: checkpoints, metrics, config


def test_overwrite_removes_the_old_run_and_only_it(assets, tmp_path):
    out = used_folder(assets, tmp_path)
    (out / "notes.txt").write_text("mine")
    LCDRecipe(config(assets, out, max_train_steps=2, checkpointing_steps=2,
                     overwrite_output_dir=True)).run(progress=False)
    assert not (out / "checkpoint-4").exists()  # the old run's later checkpoint is gone
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2]
    assert (out / "notes.txt").read_text() == "mine"
    with pytest.raises(ConfigError, match="contradict"):
        config(assets, out, overwrite_output_dir=True, resume_from_checkpoint="latest")


def test_resume_by_checkpoint_name_resolves_inside_output_dir(assets, tmp_path, monkeypatch):
    out = used_folder(assets, tmp_path)
    monkeypatch.chdir(tmp_path)  # "checkpoint-2" does not exist relative to the working folder
    recipe = LCDRecipe(config(assets, out, max_train_steps=4, resume_from_checkpoint="checkpoint-2"))
    recipe.setup()
    assert recipe.global_step == 2


def test_a_checkpoint_past_max_train_steps_is_refused(assets, tmp_path):
    out = used_folder(assets, tmp_path)
    with pytest.raises(ConfigError, match=r"step 4, beyond this run's max_train_steps = 3"):
        LCDRecipe(config(assets, out, max_train_steps=3,
                         resume_from_checkpoint="latest")).run(progress=False)


def test_resuming_on_another_dataset_is_a_data_error(assets, tmp_path):
    out = used_folder(assets, tmp_path)
    with pytest.raises(DataError, match="other"):
        LCDRecipe(config(assets, out, max_train_steps=6, data=assets["other"],
                         resume_from_checkpoint="latest")).run(progress=False)


def test_latest_without_a_checkpoint_in_a_used_folder_is_refused(assets, tmp_path):
    out = used_folder(assets, tmp_path)
    for name in ("checkpoint-2", "checkpoint-4"):
        shutil.rmtree(out / name)
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        LCDRecipe(config(assets, out, resume_from_checkpoint="latest")).run(progress=False)


def test_a_run_that_fails_during_set_up_writes_no_config(assets, tmp_path):
    empty = tmp_path / "empty-data"
    empty.mkdir()
    (empty / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "new"
    values = dataclasses.asdict(config(assets, out))
    with pytest.raises(DataError, match="broken.png|no readable samples"):
        LCDRecipe(LCDConfig(**{**values, "train_shards_path_or_url": str(empty)})).run(
            progress=False)
    assert not (out / "config.json").exists()


def test_the_folder_helpers(tmp_path):
    assert run_entries(tmp_path / "missing") == [] and clear_run(tmp_path / "missing") == []
    (tmp_path / ".checkpoint-3.tmp").mkdir()  # a crash mid-checkpoint is a run too
    (tmp_path / "keep.txt").write_text("x")
    assert run_entries(tmp_path) == [".checkpoint-3.tmp"]
    with pytest.raises(ConfigError, match="already holds a run"):
        check_output_dir(tmp_path, None, overwrite=False)
    check_output_dir(tmp_path, None, overwrite=True)
    assert clear_run(tmp_path) == [".checkpoint-3.tmp"] and (tmp_path / "keep.txt").exists()


def test_lrm_pretrain_refuses_a_used_folder_too(assets, tmp_path):
    from rewardkit.recipes.lrm_pretrain import LRMPretrainConfig, LRMPretrainRecipe

    out = tmp_path / "pre"
    out.mkdir()
    (out / "proxy").mkdir()
    recipe = LRMPretrainRecipe(LRMPretrainConfig(
        pretrained_teacher_model=str(assets["teacher"]),
        train_shards_path_or_url=str(assets["data"]), output_dir=str(out), resolution=16,
        train_batch_size=4, contrastive_steps=1, proxy_params={"embed_dim": 16,
                                                                "image_widths": [8, 16],
                                                                "text_width": 16,
                                                                "text_heads": 2},
        checkpointing_steps=0, validation_steps=0, report_to="none"))
    with pytest.raises(ConfigError, match="already holds a run"):
        recipe.run(progress=False)


def test_a_full_disk_during_a_checkpoint_names_it_and_keeps_the_previous_one(
        assets, tmp_path, monkeypatch):
    import errno

    import rewardkit.training.checkpoint as checkpoint
    from rewardkit.training.checkpoint import CheckpointWriteError

    real = checkpoint._write_json_atomic

    def full_at_step_4(path, data):
        if data.get("global_step") == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(checkpoint, "_write_json_atomic", full_at_step_4)
    out = tmp_path / "full"
    with pytest.raises(CheckpointWriteError) as raised:
        LCDRecipe(config(assets, out, max_train_steps=4, checkpointing_steps=2)).run(progress=False)
    assert str(raised.value).startswith(f"no space left writing checkpoint-4 in {out}; the "
                                        "previous checkpoint checkpoint-2 is intact")
    assert not (out / ".checkpoint-4.tmp").exists() and not (out / "checkpoint-4").exists()
    assert (out / "checkpoint-2" / "trainer_state.json").is_file()


def test_a_read_only_output_folder_is_named(assets, tmp_path, monkeypatch):
    import os

    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path).startswith(
        str(tmp_path)) else real(path, mode))  # root ignores permission bits: simulate them
    with pytest.raises(ConfigError, match=r"output_dir '.*ro/run' is not writable"):
        LCDRecipe(config(assets, tmp_path / "ro" / "run")).run(progress=False)
    assert not (tmp_path / "ro").exists()


def test_running_out_of_memory_names_the_settings_to_lower(assets, tmp_path, monkeypatch):
    from rewardkit.training.errors import TrainingError

    def allocate(self):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate "
                           "68719476736 bytes.")

    monkeypatch.setattr(LCDRecipe, "train_step", allocate)
    with pytest.raises(TrainingError, match=r"out of memory at step 1: lower train_batch_size "
                                            r"\(now 2\); or raise gradient_accumulation_steps"):
        LCDRecipe(config(assets, tmp_path / "oom")).run(progress=False)


@pytest.mark.parametrize("file", ["rank_state_0.safetensors", "model.safetensors",
                                  "random_states_0.safetensors", "trainer_state.json"])
def test_an_unreadable_latest_checkpoint_names_the_earlier_one(assets, tmp_path, file):
    out = used_folder(assets, tmp_path)
    path = out / "checkpoint-4" / file
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ConfigError) as raised:
        LCDRecipe(config(assets, out, max_train_steps=6,
                         resume_from_checkpoint="latest")).run(progress=False)
    message = str(raised.value)
    assert file in message and "checkpoint-4" in message
    assert message.endswith("resume from checkpoint-2 instead (--resume_from_checkpoint "
                            "checkpoint-2)"), message
