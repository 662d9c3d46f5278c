"""``rewardkit eval``: prompt sets, win rates, and the whole command on tiny SD and SDXL
pipelines with tiny reward models, offline."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from rewardkit.cli import build_app
from rewardkit.errors import ConfigError
from rewardkit.evaluation import PromptSet, load_prompt_set, read_prompt_set, win_rate
from rewardkit.plugins import reset_host
from rewardkit.testing.tiny_clip import build_tiny_clip
from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline
from rewardkit.testing.tiny_training import write_tiny_image_folder

PROMPTS = ["a red circle", "a green square", "a blue circle", "a red square"]


# ---------------------------------------------------------------- prompt sets


def test_prompt_files_of_every_format_give_prompts_and_categories(tmp_path):
    (tmp_path / "p.txt").write_text("# a comment\na red circle\n\na blue square\n")
    (tmp_path / "p.jsonl").write_text('{"prompt": "a red circle", "category": "shapes"}\n'
                                      '"a blue square"\n')
    (tmp_path / "p.json").write_text(json.dumps({"anime": ["a", "b"], "photo": ["c"]}))
    (tmp_path / "p.csv").write_text("Prompts,Category\na red circle,Colors\na cat,Animals\n")
    (tmp_path / "p.tsv").write_text("Prompt\tCategory\tChallenge\na red circle\tArtifacts\tSimple\n")
    assert read_prompt_set(tmp_path / "p.txt").prompts == ["a red circle", "a blue square"]
    jsonl = read_prompt_set(tmp_path / "p.jsonl")
    assert jsonl.prompts == ["a red circle", "a blue square"] and jsonl.categories == ["shapes", ""]
    assert read_prompt_set(tmp_path / "p.json").categories == ["anime", "anime", "photo"]
    assert read_prompt_set(tmp_path / "p.csv").categories == ["Colors", "Animals"]
    assert read_prompt_set(tmp_path / "p.tsv").prompts == ["a red circle"]
    assert read_prompt_set(tmp_path / "p.json").head(1).prompts == ["a", "c"]  # per category


def test_bad_prompt_input_is_named(tmp_path):
    with pytest.raises(ConfigError, match="missing.txt does not exist"):
        load_prompt_set(str(tmp_path / "missing.txt"))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"title": "no prompt"}\n')
    with pytest.raises(ConfigError, match="bad.jsonl line 2 has no prompt field"):
        read_prompt_set(tmp_path / "bad.jsonl")
    (tmp_path / "broken.json").write_text("[\"a\",")
    with pytest.raises(ConfigError, match="broken.json cannot be read"):
        read_prompt_set(tmp_path / "broken.json")
    with pytest.raises(ConfigError, match="neither a registered prompt set"):
        load_prompt_set("no-such-set")
    with pytest.raises(ConfigError, match="has no prompts"):
        PromptSet("empty", [])


def _hps_folder(root: Path) -> Path:
    for style in ("anime", "concept-art", "paintings", "photo"):
        (root / "benchmark").mkdir(parents=True, exist_ok=True)
        (root / "benchmark" / f"{style}.json").write_text(
            json.dumps([f"{style} prompt {i}" for i in range(3)]))
    return root


def test_hpsv2_benchmark_has_four_styles_from_a_folder_or_the_hub(tmp_path, monkeypatch):
    folder = _hps_folder(tmp_path / "hpd")
    local = load_prompt_set("hpsv2", source=str(folder), limit=2)
    assert local.categories == ["anime"] * 2 + ["concept-art"] * 2 + ["paintings"] * 2 + ["photo"] * 2
    assert local.prompts[:2] == ["anime prompt 0", "anime prompt 1"]

    calls = []

    def fake_snapshot_download(repo_id, repo_type=None, allow_patterns=None):
        calls.append((repo_id, repo_type))
        return str(folder)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    hub = load_prompt_set("hpsv2")
    assert calls == [("zhwang/HPDv2", "dataset")] and len(hub.prompts) == 12
    (folder / "benchmark" / "photo.json").unlink()
    with pytest.raises(ConfigError, match="photo.json is missing"):
        load_prompt_set("hpsv2", source=str(folder))


def test_partiprompts_drawbench_and_coco_read_their_own_formats(tmp_path):
    parti = tmp_path / "PartiPrompts.tsv"
    parti.write_text("Prompt\tCategory\tChallenge\tNote\nbond\tAbstract\tBasic\t\n"
                     "a cat\tAnimals\tBasic\t\na dog\tAnimals\tBasic\t\n")
    loaded = load_prompt_set("partiprompts", source=str(tmp_path), limit=1)
    assert loaded.prompts == ["bond", "a cat"] and loaded.categories == ["Abstract", "Animals"]
    bench = tmp_path / "draw" / "drawbench.csv"
    bench.parent.mkdir()
    bench.write_text("Prompts,Category\nA red colored car.,Colors\n")
    assert load_prompt_set("drawbench", source=str(bench)).categories == ["Colors"]

    images = write_tiny_image_folder(tmp_path / "coco", count=4, size=20)
    names = sorted(p.name for p in images.glob("*.png"))
    captions = {"images": [{"id": i, "file_name": n} for i, n in enumerate(names)],
                "annotations": [{"image_id": i, "caption": f"caption {i}"} for i in range(4)]
                + [{"image_id": 0, "caption": "a second caption of image 0"}]}
    (tmp_path / "captions_val2014.json").write_text(json.dumps(captions))
    coco = load_prompt_set("coco", source=str(tmp_path / "captions_val2014.json"), limit=3,
                           image_dir=str(images))
    assert len(coco.prompts) == 3 and all(p.startswith("caption ") for p in coco.prompts)
    references = coco.references(8)
    assert references.shape == (3, 3, 8, 8) and 0 <= float(references.min()) <= float(references.max()) <= 1


# ---------------------------------------------------------------- win rate


def test_win_rate_counts_ties_half_and_its_interval_is_seeded():
    assert win_rate([1, 1, 1], [0, 0, 0])["win_rate"] == 1.0
    assert win_rate([1, 0, 2, 2], [0, 1, 2, 3])["win_rate"] == pytest.approx((1 + 0 + 0.5 + 0) / 4)
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.2, 1, 200), rng.normal(0, 1, 200)
    first, again = win_rate(a, b, seed=3), win_rate(a, b, seed=3)
    assert first == again and first["ci_low"] < first["win_rate"] < first["ci_high"]
    assert first["ci_high"] - first["ci_low"] < 0.2 and first["pairs"] == 200
    with pytest.raises(ConfigError, match="equal-length"):
        win_rate([1, 2], [1])


# ---------------------------------------------------------------- the command, end to end


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from rewardkit.backbones.stable_diffusion import StableDiffusionBackbone

    root = tmp_path_factory.mktemp("eval")
    teacher = build_tiny_sd_pipeline(root / "teacher")
    backbone = StableDiffusionBackbone(str(teacher))
    student = backbone.save_pipeline(backbone.build_student(), root / "run" / "pipeline")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return {"teacher": teacher, "student": student, "prompts": root / "prompts.txt",
            "clip": build_tiny_clip(root / "clip", image_size=16),
            "reals": write_tiny_image_folder(root / "reals", count=6, size=16)}


def run_eval(models, out, *extra):
    args = ["eval", str(models["student"]), "--teacher", str(models["teacher"]),
            "--prompts", str(models["prompts"]), "--steps", "1,2", "--teacher-steps", "2",
            "--metrics", "clip-score,jpeg-compressibility,world-fd,clip-fid",
            "--metric-param", f"clip-score.model={models['clip']}",
            "--metric-param", f"clip-fid.model={models['clip']}",
            "--reference-images", str(models["reals"]), "-k", "2", "-b", "3",
            "--device", "cpu", "-o", str(out), *extra]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    return json.loads((out / "results.json").read_text())


def test_eval_samples_scores_compares_and_reports(models, tmp_path):
    results = run_eval(models, tmp_path)
    rows = {(r["model"], r["steps"]): r for r in results["rows"]}
    assert set(rows) == {("run", 1), ("run", 2), ("teacher", 2)}
    for row in rows.values():
        assert row["num_images"] == 8 and row["ms_per_image"] > 0
        assert np.isfinite(row["clip-score"]) and row["clip-score_se"] >= 0
        assert row["jpeg-compressibility"] < 0 and row["world-fd"] >= 0  # minus kB per image
        assert row["clip-fid"] >= 0
    assert rows[("run", 1)]["unet_evaluations"] == 1 and rows[("run", 2)]["unet_evaluations"] == 2
    assert rows[("teacher", 2)]["unet_evaluations"] == 4  # CFG: cond + uncond per step
    assert rows[("teacher", 2)]["unet_calls"] == 2
    wins = results["win_rates"]
    assert {(w["model"], w["steps"], w["metric"]) for w in wins} == {
        ("run", s, m) for s in (1, 2) for m in ("clip-score", "jpeg-compressibility")}
    for w in wins:
        assert w["pairs"] == 4 and w["ci_low"] <= w["win_rate"] <= w["ci_high"]
        assert w["baseline"] == "teacher 2 steps"
    assert results["seeds"].startswith("0..7") and "rewardkit eval" in results["command"]
    report = (tmp_path / "report.md").read_text()
    assert "| run | 1 |" in report and "Win rate against the teacher" in report
    assert (tmp_path / "grid.png").is_file() and (tmp_path / "steps.png").is_file()
    # the same seeds for every model: the images of prompt i, seed j are comparable
    assert len(list((tmp_path / "images" / "teacher" / "steps-2").glob("*.png"))) == 8


def test_resume_samples_only_what_is_missing_and_scores_the_same(models, tmp_path):
    first = run_eval(models, tmp_path)
    folder = tmp_path / "images" / "run" / "steps-1"
    kept = folder / "00003.png"
    stamp = kept.stat().st_mtime_ns
    (folder / "00005.png").unlink()
    again = run_eval(models, tmp_path, "--resume")
    assert kept.stat().st_mtime_ns == stamp and (folder / "00005.png").is_file()
    for a, b in zip(first["rows"], again["rows"]):
        assert a["clip-score"] == pytest.approx(b["clip-score"], abs=1e-5)
        assert a["world-fd"] == pytest.approx(b["world-fd"], rel=1e-4)
    (folder / "00002.png").write_bytes(b"not a png")  # a corrupt sample is sampled again
    third = run_eval(models, tmp_path, "--resume")
    assert third["rows"][0]["clip-score"] == pytest.approx(first["rows"][0]["clip-score"], abs=1e-5)


def test_bad_eval_input_is_named(models, tmp_path):
    runner = CliRunner()

    def fails(*args):
        result = runner.invoke(build_app(), ["eval", str(models["student"]), "--prompts",
                                     str(models["prompts"]), "-o", str(tmp_path), *args])
        assert result.exit_code != 0
        return result.output + str(result.exception)

    assert "no-such-rm is neither a registered reward model" in fails("--metrics", "no-such-rm")
    assert "has none; pass --reference-images" in fails("--metrics", "world-fd")
    assert "--steps takes" in fails("--metrics", "jpeg-compressibility", "--steps", "one")
    assert "--metric-param takes METRIC.KEY=VALUE" in fails("--metric-param", "oops")


def as_lcm_student(teacher: Path, folder: Path) -> Path:
    """A copy of ``teacher`` under an ``LCMScheduler``: a student, as an LCM-LoRA merged into its
    teacher leaves one (sampling refuses a teacher given as a student)."""
    import shutil

    from diffusers import LCMScheduler

    student = Path(shutil.copytree(teacher, folder))
    LCMScheduler.from_pretrained(teacher, subfolder="scheduler").save_config(student / "scheduler")
    index = json.loads((student / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "LCMScheduler"]
    (student / "model_index.json").write_text(json.dumps(index))
    return student


def test_eval_runs_on_a_tiny_sdxl_pipeline(tmp_path):
    from rewardkit.testing.tiny_sdxl import build_tiny_sdxl_pipeline

    teacher = build_tiny_sdxl_pipeline(tmp_path / "teacher")
    student = as_lcm_student(teacher, tmp_path / "sdxl")
    (tmp_path / "p.txt").write_text("a red circle\na blue square\n")
    result = CliRunner().invoke(build_app(), [
        "eval", str(student), "--prompts", str(tmp_path / "p.txt"), "--steps", "1",
        "--teacher", str(teacher), "--teacher-steps", "2", "--metrics", "jpeg-compressibility",
        "--device", "cpu", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [(r["model"], r["steps"]) for r in results["rows"]] == [("sdxl", 1), ("teacher", 2)]
    assert results["rows"][1]["unet_evaluations"] == 4


def test_the_world_evaluation_is_the_eval_command(tmp_path):
    """``WorldEvaluator`` rows equal ``rewardkit eval --prompts world`` rows of the same model."""
    from rewardkit.world.assets import TEACHER, asset_path
    from rewardkit.world.evaluate import WorldEvaluator

    teacher = str(as_lcm_student(asset_path(TEACHER), tmp_path / "student"))
    row = WorldEvaluator(num_images=4).evaluate(teacher, "student", steps=1, batch_size=4)[0]
    result = CliRunner().invoke(build_app(), ["eval", teacher, "--prompts", "world", "--limit", "4",
                                      "--steps", "1", "--device", "cpu", "-b", "4",
                                      "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    cli = json.loads((tmp_path / "out" / "results.json").read_text())["rows"][0]
    assert cli["world-judge"] == pytest.approx(row.judge_reward, abs=1e-9)
    assert cli["world-scorer"] == pytest.approx(row.scorer_reward, abs=1e-6)
    assert cli["world-fd"] == pytest.approx(row.frechet_distance, rel=1e-6)
    assert set(row.judge_terms) >= {"background", "crispness"}


def test_without_the_world_a_bare_eval_says_what_to_pass(fresh_host, monkeypatch, capsys,
                                                         tmp_path):
    """The defaults of --prompts/--metrics come from a registered preset (the world's); with the
    world plugin disabled there is none, and the command names what to pass, in one sentence,
    before anything loads (the model need not exist)."""
    from rewardkit import cli
    from rewardkit.evaluation.cli import preset_eval_defaults

    assert preset_eval_defaults() == {"prompts": "world",
                                      "metrics": "world-judge,world-scorer,world-fd"}
    monkeypatch.setenv("REWARDKIT_DISABLE_PLUGINS", "rewardkit.world.plugin")
    reset_host()
    assert preset_eval_defaults() == {}
    model = str(tmp_path / "no-such-model")
    assert cli.run(["eval", model, "-o", str(tmp_path / "out")]) == 1
    error = " ".join(capsys.readouterr().err.split())
    assert error.count(".") <= 2 and "Traceback" not in error, error  # one sentence
    assert "rewardkit eval needs --prompts (a registered prompt set: " in error
    assert "hpsv2" in error and "world" not in error
    assert "and --metrics (comma-separated reward models" in error
    assert "no registered preset provides them" in error
    (tmp_path / "p.txt").write_text("a red circle\na blue square\n")
    assert cli.run(["eval", model, "--prompts", str(tmp_path / "p.txt")]) == 1
    error = " ".join(capsys.readouterr().err.split())
    assert "rewardkit eval needs --metrics" in error and "--prompts (" not in error
    assert not (tmp_path / "out").exists()


def test_every_registered_reward_model_is_a_metric_and_prompt_sets_are_listed():
    from rewardkit.plugins import get_host

    host = get_host()
    assert {"hpsv2", "partiprompts", "drawbench", "coco", "world"} <= {
        s.name for s in host.list("prompts")}
    assert {"fid", "kid", "clip-fid", "world-fd"} <= {s.name for s in host.list("metric")}
    result = CliRunner().invoke(build_app(), ["list", "prompts"])
    assert result.exit_code == 0 and "partiprompts" in result.output


def test_coco_captions_with_their_images_as_fid_references(models, tmp_path):
    images = write_tiny_image_folder(tmp_path / "val2014", count=3, size=16)
    names = sorted(p.name for p in images.glob("*.png"))
    (tmp_path / "captions.json").write_text(json.dumps({
        "images": [{"id": i, "file_name": n} for i, n in enumerate(names)],
        "annotations": [{"image_id": i, "caption": PROMPTS[i]} for i in range(3)]}))
    result = CliRunner().invoke(build_app(), [
        "eval", str(models["student"]), "--prompts", "coco", "--prompts-source",
        str(tmp_path / "captions.json"), "--prompts-param", f"image_dir={images}",
        "--metrics", "world-fd", "--steps", "1", "--device", "cpu", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    row = json.loads((tmp_path / "out" / "results.json").read_text())["rows"][0]
    assert row["num_images"] == 3 and row["world-fd"] > 0


def test_a_training_checkpoint_is_evaluated_as_the_pipeline_it_holds(models, tmp_path):
    from safetensors.torch import load_file

    from rewardkit.recipes.lcd import LCDRecipe
    from rewardkit.testing.tiny_training import tiny_lcd_config

    data = write_tiny_image_folder(tmp_path / "data", count=4, size=16)
    run = tmp_path / "run"
    LCDRecipe(tiny_lcd_config(models["teacher"], data, run, max_train_steps=2,
                              checkpointing_steps=2)).run(progress=False)
    result = CliRunner().invoke(build_app(), [
        "eval", str(run / "checkpoint-2"), "--prompts", str(models["prompts"]), "--steps", "1",
        "--metrics", "jpeg-compressibility", "--device", "cpu", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    exported = tmp_path / "out" / "models" / "run-checkpoint-2"
    for part in ("unet", "unet_target"):
        a = load_file(str(exported / part / "diffusion_pytorch_model.safetensors"))
        b = load_file(str(run / "pipeline" / part / "diffusion_pytorch_model.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    assert rows[0]["model"] == "run-checkpoint-2" and rows[0]["location"] == str(exported)
    assert not exported.with_name(exported.name + ".partial").exists()

    # a checkpoint of a DDP-wrapped student (keys "module.*") exports to the same weights
    import shutil

    from safetensors.torch import save_file

    from rewardkit.evaluation.models import export_checkpoint

    ddp = tmp_path / "ddp"
    shutil.copytree(run / "checkpoint-2", ddp / "checkpoint-2")
    shutil.copy(run / "config.json", ddp / "config.json")
    state = load_file(str(ddp / "checkpoint-2" / "model.safetensors"))
    save_file({f"module.{k}": v for k, v in state.items()},
              str(ddp / "checkpoint-2" / "model.safetensors"))
    again = export_checkpoint(ddp / "checkpoint-2", tmp_path / "ddp-export")
    c = load_file(str(again / "unet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(run / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(c[k], b[k]) for k in b)
    (tmp_path / "broken" / "checkpoint-1").mkdir(parents=True)
    (tmp_path / "broken" / "config.json").write_text("{")
    result = CliRunner().invoke(build_app(), ["eval", str(tmp_path / "broken" / "checkpoint-1"),
                                              "--prompts", str(models["prompts"]), "-o",
                                              str(tmp_path / "out2")])
    assert result.exit_code != 0 and "config.json cannot be read" in str(result.exception)


def test_two_processes_share_the_images_and_match_one_process(models, tmp_path):
    """Under torchrun each process samples every other image; the main one scores them all."""
    import shutil
    import subprocess
    import sys

    torchrun = Path(sys.executable).with_name("torchrun")
    common = ["eval", str(models["student"]), "--prompts", str(models["prompts"]), "--steps", "1",
              "--metrics", "jpeg-compressibility", "-k", "2", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(torchrun if torchrun.exists() else shutil.which("torchrun")),
                           "--nproc_per_node", "2", "-m", "rewardkit", *common,
                           "-o", str(tmp_path / "two")], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    folder = tmp_path / "two" / "images" / "run" / "steps-1"
    timings = [json.loads((folder / f"timing-{rank}.json").read_text()) for rank in (0, 1)]
    assert [t["images"] for t in timings] == [4, 4]
    single = CliRunner().invoke(build_app(), [*common, "-o", str(tmp_path / "one")])
    assert single.exit_code == 0, single.output
    one = tmp_path / "one" / "images" / "run" / "steps-1"
    for index in range(8):  # the same seeds whichever process sampled an image
        assert (folder / f"{index:05d}.png").read_bytes() == (one / f"{index:05d}.png").read_bytes()
    rows = json.loads((tmp_path / "two" / "results.json").read_text())["rows"]
    assert rows[0]["num_images"] == 8 and rows[0]["timed_images"] == 8


def test_reference_images_come_from_folders_shards_or_any_data_spec(tmp_path):
    from data_fixtures import write_shard

    from rewardkit.evaluation.runner import reference_images

    shard = write_shard(tmp_path / "data-000.tar", range(5))
    from_shards = reference_images(str(shard), side=16, count=8)
    assert from_shards.shape == (5, 3, 16, 16)  # all the shard has, each once
    assert 0.0 <= float(from_shards.min()) <= float(from_shards.max()) <= 1.0
    world = reference_images("world:test?size=6", side=16, count=4)
    assert world.shape == (4, 3, 16, 16)
    folder = write_tiny_image_folder(tmp_path / "reals", count=3, size=20)
    assert reference_images(str(folder), side=16, count=8).shape == (3, 3, 16, 16)
    with pytest.raises(ConfigError, match="--reference-images"):
        reference_images(str(tmp_path / "nowhere"), side=16, count=4)
