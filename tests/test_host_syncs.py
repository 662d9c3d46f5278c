"""A training step reads the device back once: the NaN checks and every metric in one transfer.

Host syncs are counted by patching the tensor methods that return a value to Python
(:mod:`rewardkit.testing.host_syncs`); the steady state is the second step, after the first
has built optimiser state and caches.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import rewardkit as rk
from rewardkit.checks import deferred, nonfinite_count, require
from rewardkit.cpu_values import cpu_tolist
from rewardkit.errors import RewardModelError
from rewardkit.recipes.lcd import LCDRecipe
from rewardkit.testing.host_syncs import count_host_syncs
from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline
from rewardkit.training.checkpoint import list_checkpoints
from rewardkit.training.errors import TrainingError
from rewardkit.testing.tiny_training import tiny_lcd_config, write_tiny_image_folder

from test_step_pinned import RUNS, redness


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("syncs")
    return {"teacher": build_tiny_sd_pipeline(root / "teacher"),
            "data": write_tiny_image_folder(root / "data", count=8, size=16)}


def steady_state_syncs(recipe):
    recipe.setup()
    recipe.train_step()
    recipe.global_step += 1
    with count_host_syncs() as syncs:
        metrics = recipe.train_step()
    return syncs, metrics


@pytest.mark.parametrize("label", list(RUNS))
def test_a_steady_state_step_reads_the_device_back_once(assets, tmp_path, label):
    name, extra = RUNS[label]
    values = dict(pretrained_teacher_model=str(assets["teacher"]),
                  train_shards_path_or_url=str(assets["data"]), resolution=16,
                  train_batch_size=2, max_train_steps=4, unet_time_cond_proj_dim=32,
                  validation_steps=0, checkpointing_steps=0, report_to="none",
                  output_dir=str(tmp_path), **extra)
    if name == "rg-lcd":
        values.update(proxy_batch_size=2, vae_decode_batch_size=2)
    recipe = rk.recipe(name, values, **({"reward": redness()} if name == "rg-lcd" else {}))
    syncs, metrics = steady_state_syncs(recipe)
    assert syncs.count == 1, syncs.report()
    assert all(isinstance(v, float) for v in metrics.values()), metrics


def test_the_default_world_run_adds_only_its_host_judges_read(tmp_path):
    """The embedded world: its numpy judge, the shipped LRM, replay and several proxy updates.

    A judge that runs on the CPU (numpy) has to read the images it scores: that read, once
    per step, is the only sync besides the step's own readback."""
    recipe = rk.recipe("rg-lcd", output_dir=str(tmp_path), max_train_steps=4,
                       validation_steps=0, checkpointing_steps=0, report_to="none")
    syncs, metrics = steady_state_syncs(recipe)
    where = [where.split(" ")[0].rsplit(":", 1)[0] for _, where in syncs.calls]
    assert where == ["world/rewards.py", "checks.py"], syncs.report()
    assert {"proxy_accuracy", "expert_reward", "lrm_reward"} <= set(metrics)


def test_the_counter_counts_value_reads_and_not_cpu_draws():
    device_value = torch.ones(3)
    with count_host_syncs() as syncs:
        float(device_value.sum())
        bool(device_value.any())
        device_value.tolist()
        cpu_tolist(torch.randperm(4, generator=torch.Generator().manual_seed(0)))
    assert [method for method, _ in syncs.calls] == ["__float__", "__bool__", "tolist"]
    with pytest.raises(ValueError, match="CPU tensors only"):
        cpu_tolist(torch.ones(2, device="meta"))


def test_deferred_checks_raise_at_the_read_and_immediate_ones_at_once():
    nan = torch.tensor([1.0, float("nan")])
    with pytest.raises(RewardModelError, match="1 bad"):
        require(nonfinite_count(nan), lambda n, _: f"{n} bad", RewardModelError)
    with deferred() as checks:
        require(nonfinite_count(nan), lambda n, values: f"{n} bad, loss {values['loss']}",
                RewardModelError)  # recorded, not raised
        with pytest.raises(RewardModelError, match="1 bad, loss 2.0"):
            checks.read({"loss": torch.tensor(2.0)})
    with deferred() as checks:
        require(nonfinite_count(torch.ones(2)), lambda n, _: "never", RewardModelError)
        assert checks.read({"a": torch.tensor(1.5), "b": 2}) == {"a": 1.5, "b": 2.0}


class NaNAt(LCDRecipe):
    """An extension loss that turns NaN at step 3."""

    def losses(self, batch) -> dict[str, torch.Tensor]:
        terms = super().losses(batch)
        value = torch.zeros((), device=terms["lcd_loss"].device)
        return {**terms, "my_loss": value / 0 if self.global_step == 2 else value}


def test_a_nan_loss_term_is_named_and_the_step_is_never_saved(assets, tmp_path):
    recipe = NaNAt(tiny_lcd_config(assets["teacher"], assets["data"], tmp_path,
                                   max_train_steps=4, checkpointing_steps=1))
    with pytest.raises(TrainingError, match=r"step 3: my_loss is not finite \(nan\)"):
        recipe.run(progress=False)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [1, 2]
    saved = load_file(str(tmp_path / "checkpoint-2" / "model.safetensors"))
    assert all(torch.isfinite(tensor).all() for tensor in saved.values())
    assert not (tmp_path / "pipeline").exists()
