"""Run reports: the markdown table, the labelled grid, training curves, and the default world run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import rewardkit as rk
from rewardkit.errors import ConfigError
from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline
from rewardkit.proxies import LatentRewardModel
from rewardkit.proxies.preference_set import GROUND_TRUTH, PreferenceSet
from rewardkit.world.assets import FEATURES, LRM, SCORER, TEACHER, save_net
from rewardkit.world.lrm import WORLD_LRM_PARAMS, WORLD_UNET_LRM_PARAMS
from rewardkit.world.default_run import (DEFAULT_MAX_TRAIN_STEPS,
                                         default_rg_lcd_overrides, finalize_world_run,
                                         validation_captions)
from rewardkit.world.evaluate import EvalRow
from rewardkit.world.nets import WorldFeatureNet, WorldScorerNet
from rewardkit.plots import (PANEL_COLUMNS, PANEL_SIZE, grid_size, labelled_grid,
                                   moving_average, numeric_series, plot_training_curves)
from rewardkit.world.report import format_table, write_report
from rewardkit.world.source import WorldSource, world_source_from_spec


def _row(name: str, steps: int, ms: float, kind: str = "student", speedup: float | None = None) -> EvalRow:
    return EvalRow(name=name, kind=kind, steps=steps, guidance_scale=7.5, judge_reward=0.5,
                   scorer_reward=0.25, frechet_distance=1.5, ms_per_image=ms,
                   unet_evaluations=2 * steps if kind == "teacher" else steps, unet_calls=steps,
                   num_images=4, speedup=speedup)


def _metrics(path: Path, steps: int = 30) -> Path:
    with open(path, "w") as handle:
        for step in range(1, steps + 1):
            handle.write(json.dumps({"step": step, "lcd_loss": 1.0 / step, "reward_loss": -0.01 * step,
                                     "proxy_accuracy": 0.5 + step / 100, "note": "text",
                                     "lr": 1e-4, "bad": None}) + "\n")
    return path


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    """A tiny world at 32 px: teacher (3 VAE blocks: 8x8 latents), random scorer and feature nets."""
    root = tmp_path_factory.mktemp("assets")
    build_tiny_sd_pipeline(root / TEACHER, vae_block_out_channels=(32, 32, 64))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        save_net(WorldScorerNet(width=8, attribute_dim=4), root / SCORER)
        save_net(WorldFeatureNet(width=8), root / FEATURES)
        text_dim = json.loads((root / TEACHER / "text_encoder" / "config.json").read_text())["hidden_size"]
        LatentRewardModel(latent_channels=4, text_dim=text_dim,
                          **WORLD_LRM_PARAMS).save_pretrained(root / LRM)
        PreferenceSet(latents=torch.randn(4, 4, 8, 8), prompt_embeds=torch.randn(2, 5, text_dim),
                      prompt_index=torch.tensor([0, 0, 1, 1]), captions=["a", "b"],
                      kinds=[GROUND_TRUTH, "x", GROUND_TRUTH, "x"],
                      expert=torch.tensor([1.0, 0.0, 1.0, 0.0])).save(root / LRM / "preference_set")
    return root


def test_table_has_one_line_per_row_with_speedups():
    table = format_table([_row("teacher", 50, 200.0, "teacher", 1.0), _row("rg-lcd", 2, 8.0, speedup=25.0)])
    lines = table.splitlines()
    assert len(lines) == 4 and "Frechet distance" in lines[0] and "UNet evals/image" in lines[0]
    assert lines[2].startswith("| teacher | 50 |") and "| 100 | 1.0x |" in lines[2]
    assert lines[3].startswith("| rg-lcd | 2 | 0.500 | 0.250 | 1.5 | 8.0 | 2 | 25.0x |")
    with_error = EvalRow(**{**_row("x", 1, 1.0).as_dict(), "judge_reward_se": 0.02})
    assert "| 0.500 ± 0.020 |" in format_table([with_error])


def test_labelled_grid_has_the_layout_size_and_the_images():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    columns = [(f"model {c}", [Image.new("RGB", (16, 16), colour) for colour in colours])
               for c in range(4)]
    grid = labelled_grid(columns, ["a red circle on a white background"] * 3, scale=2)
    assert grid.size == grid_size(4, 3, 32)
    x0, y0 = grid_size(0, 0, 32)  # the label column and header band
    assert grid.getpixel((x0 + 5, y0 + 5)) == (255, 0, 0)
    assert grid.getpixel((x0 + 5, y0 + 34 + 5)) == (0, 255, 0)
    with pytest.raises(ValueError, match="column 'bad'"):
        labelled_grid([("bad", columns[0][1][:2])], ["x"] * 3)


def test_training_curves_plot_every_numeric_key(tmp_path):
    series = numeric_series([json.loads(line) for line in _metrics(tmp_path / "m.jsonl").read_text().splitlines()])
    assert list(series) == ["lcd_loss", "reward_loss", "proxy_accuracy", "lr"]  # preferred order
    assert series["lcd_loss"][0][:3] == [1.0, 2.0, 3.0]
    assert moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    out = plot_training_curves(tmp_path / "m.jsonl", tmp_path / "curves.png")
    with Image.open(out) as image:
        assert image.size == (PANEL_COLUMNS * PANEL_SIZE[0], 2 * PANEL_SIZE[1])
    assert plot_training_curves(tmp_path / "missing.jsonl", tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_write_report_writes_markdown_json_and_pngs(tmp_path):
    _metrics(tmp_path / "metrics.jsonl")
    (tmp_path / "config.json").write_text(json.dumps({"reward": "world-judge", "seed": 0}))
    rows = [_row("teacher", 50, 200.0, "teacher", 1.0), _row("student", 1, 4.0, speedup=50.0)]
    columns = [("teacher", [Image.new("RGB", (8, 8))] * 2), ("student", [Image.new("RGB", (8, 8))] * 2)]
    report = write_report(tmp_path, rows, columns=columns, grid_prompts=["p one", "p two"],
                          command="rewardkit run rg-lcd")
    text = report.read_text()
    assert "| student | 1 |" in text and "rewardkit run rg-lcd" in text and '"reward": "world-judge"' in text
    assert "comparison.png" in text and "training_curves.png" in text
    assert [r["name"] for r in json.loads((tmp_path / "eval.json").read_text())] == ["teacher", "student"]
    with Image.open(tmp_path / "comparison.png") as image:
        assert image.size == grid_size(2, 2, 24)


def test_world_source_specs():
    source = world_source_from_spec("world:train", side=16)
    assert isinstance(source, WorldSource) and source.split == "train" and source.side == 16
    source = world_source_from_spec("world:test?size=10&side=32&seed=3", side=16)
    assert (source.split, len(source), source.side, source.seed) == ("test", 10, 32, 3)
    assert world_source_from_spec("data-{000..009}.tar") is None
    with pytest.raises(ConfigError, match="world:train"):
        world_source_from_spec("world:nope")
    with pytest.raises(ConfigError, match="'colour'"):
        world_source_from_spec("world:train?colour=red")


def test_default_overrides_make_a_valid_rg_lcd_config(assets):
    overrides = default_rg_lcd_overrides(assets_root=assets)
    config = rk.recipe("rg-lcd", overrides).config
    assert config.pretrained_teacher_model == str(assets / TEACHER)
    assert (config.reward, config.proxy, config.resolution) == ("world-judge", "lrm", 32)
    assert config.max_train_steps == DEFAULT_MAX_TRAIN_STEPS
    assert config.validation_prompts == validation_captions()
    assert set(config.validation_prompts) <= set(WorldSource("validation").captions())
    assert config.train_shards_path_or_url == "world:train"
    assert config.pretrained_proxy == str(assets / LRM)  # the shipped pretrained LRM
    assert config.proxy_eval_shards_path_or_url == "world:validation"
    assert config.proxy_rehearsal_set == str(assets / LRM / "preference_set")
    with pytest.raises(ConfigError, match="world build"):
        default_rg_lcd_overrides(assets_root=assets / "nowhere")
    with pytest.raises(ConfigError, match="w_min"):  # the rest of the config is still validated
        rk.recipe("rg-lcd", {**overrides, "w_min": 20.0})
    with pytest.raises(ConfigError, match="world:nope"):
        rk.recipe("rg-lcd", {**overrides, "train_shards_path_or_url": "world:nope"})


def test_default_world_run_trains_and_reports(assets, tmp_path):
    overrides = default_rg_lcd_overrides(assets_root=assets, output_dir=str(tmp_path / "run"),
                                         max_train_steps=2)
    overrides.update(train_batch_size=4, proxy_batch_size=2, validation_steps=2, checkpointing_steps=0,
                     validation_prompts=validation_captions(2), proxy_eval_num_prompts=4)
    output = rk.recipe("rg-lcd", overrides).run(progress=False)
    report = finalize_world_run(output, assets_root=assets, num_images=4, teacher_steps=2,
                                student_steps=(1, 2), batch_size=4, command="rewardkit run rg-lcd")
    rows = json.loads((output / "eval.json").read_text())
    assert [(r["kind"], r["steps"], r["unet_evaluations"]) for r in rows] == [
        ("teacher", 2, 4), ("student", 1, 1), ("student", 2, 2)]
    assert "world:train" in report.read_text()  # the config is in the report
    # the proxy's held-out accuracy, before and after training, in the report and eval.json
    assert "agreement with the expert" in report.read_text()
    assert all(0 <= r["proxy_heldout_accuracy"] <= 1 and "initial_proxy_heldout_accuracy" in r
               for r in rows if r["kind"] == "student")
    with Image.open(output / "comparison.png") as image:  # teacher + 2 student columns, 2 prompts
        assert image.size == grid_size(3, 2, 32 * 3)
    with Image.open(output / "training_curves.png") as image:
        assert image.size[0] == PANEL_COLUMNS * PANEL_SIZE[0]
    with pytest.raises(ConfigError, match="no student pipeline"):
        finalize_world_run(tmp_path / "empty", assets_root=assets)


def test_rg_lcd_with_no_arguments_runs_the_embedded_world(assets, monkeypatch):
    monkeypatch.setattr("rewardkit.world.assets.ASSETS", assets)
    config = rk.recipe("rg-lcd").config
    assert (config.reward, config.proxy, config.train_shards_path_or_url) == (
        "world-judge", "lrm", "world:train")
    assert config.report and config.pretrained_teacher_model == str(assets / TEACHER)
    assert rk.recipe("rg-lcd", max_train_steps=3).config.max_train_steps == 3  # user values win
    # naming a teacher means a real setting: no world defaults are mixed in
    with pytest.raises(ConfigError, match="train_shards_path_or_url"):
        rk.recipe("rg-lcd", pretrained_teacher_model=str(assets / TEACHER))


def test_rg_lcd_with_no_arguments_and_no_built_world_says_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.setattr("rewardkit.world.assets.ASSETS", tmp_path / "missing")
    with pytest.raises(ConfigError, match="rewardkit world build"):
        rk.recipe("rg-lcd")


def test_world_defaults_fit_the_users_proxy_and_reward(assets, monkeypatch):
    monkeypatch.setattr("rewardkit.world.assets.ASSETS", assets)
    direct = rk.recipe("rg-lcd", proxy="none", reward="world-scorer").config
    assert direct.pretrained_proxy is None and direct.proxy_rehearsal_set is None
    # an LRM learning another RM must not start from (or rehearse) the judge's LRM
    other = rk.recipe("rg-lcd", reward="world-scorer").config
    assert other.proxy == "lrm" and other.pretrained_proxy is None
    assert other.proxy_rehearsal_set is None and other.proxy_params == WORLD_LRM_PARAMS
    # ... and it learns on the paper's online schedule, not the one tuned for a pretrained LRM
    # (which collapsed a from-scratch LRM at beta 20); the user's own values still win
    assert (other.proxy_lr, other.proxy_updates_per_step, other.proxy_replay_size,
            other.proxy_loss_type) == (1e-3, 1, 0, "distillation")
    assert rk.recipe("rg-lcd", reward="world-scorer", proxy_lr=5e-4).config.proxy_lr == 5e-4
    judge = rk.recipe("rg-lcd").config
    assert judge.pretrained_proxy == str(assets / LRM)
    assert (judge.proxy_lr, judge.proxy_updates_per_step, judge.proxy_replay_size,
            judge.proxy_loss_type) == (1e-4, 2, 256, "cross_entropy")
    # another proxy than lrm: not loaded from the shipped lrm, sized for the world, and it still
    # rehearses the judge's pairs (they are latents and judge scores, whatever reads them)
    unet = rk.recipe("rg-lcd", proxy="lrm-unet").config
    assert unet.pretrained_proxy is None and unet.proxy_params == WORLD_UNET_LRM_PARAMS
    assert unet.proxy_rehearsal_set == judge.proxy_rehearsal_set
    # another resolution: the shipped LRM still loads (it reads latents of any size), but its
    # rehearsal pairs are latents of 32-px images, which rg-lcd would refuse at 64 px
    wide = rk.recipe("rg-lcd", resolution=64).config
    assert wide.pretrained_proxy == judge.pretrained_proxy and wide.proxy_rehearsal_set is None
    assert rk.recipe("rg-lcd", resolution=32).config.proxy_rehearsal_set == judge.proxy_rehearsal_set
    pretrain = rk.recipe("lrm-pretrain", proxy="lrm-unet").config
    assert pretrain.contrastive_steps == 0 and pretrain.proxy_params == WORLD_UNET_LRM_PARAMS
