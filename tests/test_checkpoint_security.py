"""Loading a checkpoint never runs code: every state file rewardkit writes is safetensors + JSON
(the model, its optimiser, the LR schedule, the RNGs, the data position, a recipe's own state),
a pickle planted under any name is never read, and a truncated file is refused with an error
that names it."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch

from rewardkit.errors import ConfigError
from rewardkit.recipes.lcd import LCDRecipe
from rewardkit.recipes.rg_lcd import RGLCDConfig, RGLCDRecipe
from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline
from rewardkit.recipes.lcd_config import LCDConfig
from rewardkit.testing.tiny_training import tiny_lcd_config, write_tiny_image_folder

SMALL_LRM = dict(embed_dim=16, image_widths=[8, 16], text_width=16, text_heads=2)


class Payload:
    """A pickle that, when unpickled by a full unpickler, creates the file ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One finished 2-step run of each recipe, with a checkpoint at step 2."""
    root = tmp_path_factory.mktemp("security")
    teacher = build_tiny_sd_pipeline(root / "teacher")
    data = write_tiny_image_folder(root / "data", count=8, size=16)
    common = dict(max_train_steps=2, checkpointing_steps=2)
    lcd = dataclasses.asdict(tiny_lcd_config(teacher, data, root / "lcd", **common))
    LCDRecipe(LCDConfig(**lcd)).run(progress=False)
    rg = {**dataclasses.asdict(tiny_lcd_config(teacher, data, root / "rg", **common)),
          "reward": "jpeg-compressibility", "proxy": "lrm", "proxy_params": dict(SMALL_LRM),
          "proxy_batch_size": 2, "proxy_eval_num_prompts": 0, "proxy_replay_size": 8,
          "proxy_updates_per_step": 2}
    RGLCDRecipe(RGLCDConfig(**rg)).run(progress=False)
    return {"lcd": (LCDRecipe, LCDConfig, lcd), "rg-lcd": (RGLCDRecipe, RGLCDConfig, rg)}


def copy_run(runs, name, tmp_path) -> tuple[Path, object]:
    recipe, config_class, values = runs[name]
    out = tmp_path / name
    shutil.copytree(values["output_dir"], out)
    config = config_class(**{**values, "output_dir": str(out), "max_train_steps": 3,
                             "resume_from_checkpoint": "latest"})
    return out / "checkpoint-2", lambda: recipe(config).run(progress=False)


def test_no_state_file_rewardkit_writes_is_a_pickle(runs):
    for name in ("lcd", "rg-lcd"):
        checkpoint = Path(runs[name][2]["output_dir"]) / "checkpoint-2"
        pickles = [p.name for p in checkpoint.rglob("*") if p.suffix in (".pt", ".pkl", ".bin")]
        assert not pickles, pickles
        for name in ("rank_state_0.json", "random_states_0.json", "optimizer.json",
                     "scheduler.json", "model.safetensors"):
            assert (checkpoint / name).is_file(), name
    rg = Path(runs["rg-lcd"][2]["output_dir"]) / "checkpoint-2"
    assert (rg / "extra_state.json").is_file() and (rg / "extra_state.safetensors").is_file()


@pytest.mark.parametrize("name,file", [
    ("lcd", "extra_state.pt"),
    ("lcd", "rank_state_0.pt"),
    ("rg-lcd", "extra_state.pt"),
    ("rg-lcd", "rank_state_0.pt"),
])
def test_a_pt_state_file_planted_in_a_checkpoint_is_never_read(runs, tmp_path, name, file):
    checkpoint, resume = copy_run(runs, name, tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"state": Payload(marker)}, checkpoint / file)
    out = resume()
    assert not marker.exists()
    assert (Path(out) / "pipeline").is_dir()


@pytest.mark.parametrize("name,state", [("lcd", "rank_state_0"), ("rg-lcd", "extra_state")])
def test_a_checkpoint_without_its_safetensors_state_is_refused_not_unpickled(runs, tmp_path,
                                                                             name, state):
    checkpoint, resume = copy_run(runs, name, tmp_path)
    (checkpoint / f"{state}.json").unlink()
    (checkpoint / f"{state}.safetensors").unlink()
    marker = tmp_path / "pwned"
    torch.save({"state": Payload(marker)}, checkpoint / f"{state}.pt")
    with pytest.raises(ConfigError, match="resume_from_checkpoint"):
        resume()
    assert not marker.exists()


@pytest.mark.parametrize("file", ["optimizer.bin", "scheduler.bin", "random_states_0.pkl",
                                  "pytorch_model.bin"])
def test_a_pickle_planted_where_accelerate_keeps_its_state_is_never_read(runs, tmp_path, file):
    checkpoint, resume = copy_run(runs, "rg-lcd", tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"state": Payload(marker)}, checkpoint / file)
    out = resume()
    assert not marker.exists() and (Path(out) / "pipeline").is_dir()


@pytest.mark.parametrize("file", ["rank_state_0.json", "rank_state_0.safetensors",
                                  "extra_state.json", "random_states_0.json",
                                  "random_states_0.safetensors", "model.safetensors",
                                  "target.safetensors", "optimizer.safetensors", "optimizer.json",
                                  "scheduler.json", "trainer_state.json",
                                  "proxy/proxy.safetensors", "proxy_replay.safetensors"])
def test_a_truncated_state_file_is_named(runs, tmp_path, file):
    checkpoint, resume = copy_run(runs, "rg-lcd", tmp_path)
    path = checkpoint / file
    assert path.is_file(), file
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])
    with pytest.raises(ConfigError, match=file.replace(".", r"\.")):
        resume()
