"""The training loop with a recipe that is not LCD: the "Writing a recipe" example of
docs/training.md runs as written, logs its own loss, checkpoints and resumes exactly."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline
from rewardkit.training.checkpoint import list_checkpoints
from rewardkit.training.metrics import read_metrics
from rewardkit.testing.tiny_training import write_tiny_image_folder

DOCS = Path(__file__).resolve().parents[1] / "docs" / "training.md"


def documented_recipe() -> dict:
    """Execute the python block of the "Writing a recipe" section; its names."""
    section = DOCS.read_text().split("## Writing a recipe", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the section has one complete recipe"
    names: dict = {}
    exec(compile(blocks[0], str(DOCS), "exec"), names)
    return names


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop")
    return {"teacher": build_tiny_sd_pipeline(root / "teacher"),
            "data": write_tiny_image_folder(root / "data", count=8, size=16)}


def run(names: dict, assets, out: Path, **values):
    config = names["DenoiseConfig"](
        pretrained_teacher_model=str(assets["teacher"]), train_shards_path_or_url=str(assets["data"]),
        output_dir=str(out), resolution=16, train_batch_size=2, learning_rate=1e-3, seed=0,
        report_to="none", validation_steps=0, **values)
    recipe = names["Denoise"](config)
    recipe.run(progress=False)
    return recipe


def test_the_documented_recipe_trains_logs_its_loss_and_saves(assets, tmp_path):
    names = documented_recipe()
    recipe = run(names, assets, tmp_path, max_train_steps=3, checkpointing_steps=0)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["mse"] > 0 and "lcd_loss" not in r for r in rows)
    saved = load_file(str(tmp_path / "model.safetensors"))
    teacher = recipe.backbone.unet.state_dict()
    assert saved.keys() == teacher.keys()
    assert any(not torch.equal(saved[k], teacher[k]) for k in saved)  # it trained


class CrashAfter2:
    def after_step(self):
        if self.global_step + 1 == 3:
            raise KeyboardInterrupt("simulated interruption")
        return super().after_step()


def test_the_documented_recipe_resumes_bit_exactly(assets, tmp_path):
    names = documented_recipe()
    common = dict(max_train_steps=4, checkpointing_steps=2)
    run(names, assets, tmp_path / "a", **common)
    crashing = type("Crashing", (CrashAfter2, names["Denoise"]), {})
    with pytest.raises(KeyboardInterrupt):
        run({**names, "Denoise": crashing}, assets, tmp_path / "b", **common)
    assert [s for s, _ in list_checkpoints(tmp_path / "b")] == [2]
    run(names, assets, tmp_path / "b", resume_from_checkpoint="latest", **common)
    a, b = (load_file(str(tmp_path / x / "model.safetensors")) for x in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows_a, rows_b = (read_metrics(tmp_path / x / "metrics.jsonl") for x in ("a", "b"))
    assert [r["mse"] for r in rows_a[2:]] == [r["mse"] for r in rows_b if r["step"] > 2][-2:]


class PromptsOnly:
    """A recipe whose batches are prompts only (batch_kind "prompts"): it pushes the UNet's
    output on noise towards zero for each caption."""

    @staticmethod
    def build(names: dict):
        from rewardkit.training import TrainingLoop

        class Recipe(TrainingLoop):
            name = "prompts-only"
            Config = names["DenoiseConfig"]
            batch_kind = "prompts"
            seen: list = []

            def build_models(self):
                return self.backbone.build_student(time_cond_proj_dim=None)

            def losses(self, batch):
                Recipe.seen.append(sorted(batch))
                cond = self.backbone.encode_prompts(batch["captions"]).float()
                side = self.backbone.latent_side(self.config.resolution)
                noise = torch.randn((len(batch["captions"]), 4, side, side),
                                    generator=self.generator)
                t = torch.full((len(batch["captions"]),), 500, dtype=torch.long)
                out = self.backbone.predict(self.model, noise, t, cond)
                return {"zero_loss": out.float().pow(2).mean()}

        return Recipe


def test_a_prompts_only_recipe_reads_a_prompt_file_and_keeps_the_contract(assets, tmp_path):
    from rewardkit.testing.recipe_contract import check_recipe

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\na green cat\na photo of a dog\n")
    recipe = PromptsOnly.build(documented_recipe())
    values = dict(pretrained_teacher_model=str(assets["teacher"]),
                  train_shards_path_or_url=str(prompts), resolution=16, train_batch_size=2,
                  learning_rate=1e-3, seed=0, report_to="none", validation_steps=0)
    assert check_recipe(recipe, values, tmp_path / "runs", processes=False) == [
        "resume", "no_pickles", "non_finite"]
    assert recipe.seen and all("pixel_values" not in keys and "captions" in keys
                               for keys in recipe.seen)
