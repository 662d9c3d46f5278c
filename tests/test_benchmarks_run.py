"""The speed benchmarks still run (at toy sizes) and their correctness checks hold: a benchmark
that rots silently is a claim in the README that no command reproduces."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args: str, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args,
                           "--json", str(out)], capture_output=True, text=True, env=env,
                          timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("recipe", ["lcd", "rg-lcd"])
def test_bench_vs_diffusers_computes_the_peers_loss(tmp_path, recipe):
    result = run("bench_vs_diffusers.py", "--recipe", recipe, "--check", "--rounds", "1",
                 "--warmup", "0", "--latent", "8", "--batch", "2", "--threads", "1",
                 "--widths", "32,64", "--vae-widths", "32,64", out=tmp_path / "r.json")
    assert result["loss_abs_difference_fp32"] < 1e-6  # the same algorithm, the same loss
    rows = result["rows"]
    assert set(rows) == {"encode_each_step", "pre_encoded"}  # like for like, both ways
    for row in rows.values():
        assert row["ratio_rewardkit_over_diffusers"] == pytest.approx(
            row["rewardkit_s"] / row["diffusers_s"])
    for side in ("rewardkit", "diffusers"):
        assert result["pre_encoding_effect"][side] == pytest.approx(
            rows["pre_encoded"][f"{side}_s"] / rows["encode_each_step"][f"{side}_s"])
        for row in rows:
            # the step's time outside its models, and the models' (they ran, and were timed)
            overhead_s = result["overhead_ms"][side][row] / 1e3
            assert 0.0 < overhead_s and 0.0 < result["model_s"][side][row]
            assert len(result["rounds_s"][f"{row}/{side}"]) == 1


def test_check_compile_finds_eagers_gradients(tmp_path):
    """The gradient check only: its training half (``lcd`` with compile off and on, losses
    compared) is what ``test_lcd_training.py::test_compile_trains_the_same_student_and_keeps_
    checkpoint_names`` pins, and compiling twice more here would cost the suite half a minute."""
    result = run("check_compile.py", "--backend", "aot_eager", "--threads", "1",
                 "--skip-training", out=tmp_path / "c.json")
    assert result["gradients"]["parameters"] > 100
    assert result["gradients"]["wrong_gradients"] == 0
    assert result["gradients"]["max_relative_difference"] < 1e-5
    assert "training" not in result


def test_lrm_losses_trains_every_variant(tmp_path):
    shipped = ROOT / "rewardkit/world/assets/lrm/preference_set"
    result = run("lrm_losses.py", "--heldout", str(shipped), "--steps", "3", "--batch", "16",
                 "--renders", "4", "--renders-steps", "2", "--seeds", "0", "1", "--threads", "1",
                 out=tmp_path / "l.json")
    assert set(result["runs"]) == {"bt", "soft", "regression", "ema", "noise", "all", "small", "renders"}
    for runs in result["runs"].values():
        assert len(runs) == 2
        for run_ in runs:
            assert all(0.0 <= run_[k] <= 1.0 for k in ("all", "gen_vs_gt", "gt_vs_16_step_teacher"))


def test_lrm_ceiling_scores_latents_and_decoded_images(tmp_path):
    shipped = ROOT / "rewardkit/world/assets/lrm/preference_set"
    result = run("lrm_ceiling.py", "--heldout", str(shipped), "--prompts", "6", "--steps", "2",
                 "--batch", "8", "--seeds", "0", "--threads", "1", out=tmp_path / "c.json")
    rows = result["runs"]
    assert len(rows) == 5 and all(len(runs) == 1 for runs in rows.values())
    # the judge re-run on the decoded latents agrees with the scores the set stores
    assert rows["judge on the decoded held-out images"][0]["all"] >= 0.95
    for runs in rows.values():
        assert all(0.0 <= runs[0][k] <= 1.0 for k in ("all", "gen_vs_gt", "gt_vs_16_step_teacher"))


def test_lrm_pairs_splits_ground_truth_pairs_by_the_deciding_judge_term(tmp_path):
    import re

    from rewardkit.proxies.preference_set import PreferenceSet

    shipped = ROOT / "rewardkit/world/assets/lrm"
    small = PreferenceSet.load(shipped / "preference_set").subset(range(6)).save(tmp_path / "set")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/lrm_pairs.py"), "--proxy", str(shipped),
                           "--sets", str(small), "--judge-terms"], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    vs_gt = re.findall(r"ground truth vs \S+: (\d+) pairs", done.stdout)
    decided = re.findall(r"decided by (\w+): (\d+) pairs, accuracy ([\d.]+)", done.stdout)
    assert vs_gt and decided
    from rewardkit.world.judge import WEIGHTS

    assert {term for term, _, _ in decided} <= set(WEIGHTS)
    assert sum(int(n) for _, n, _ in decided) == sum(int(n) for n in vs_gt)  # every pair, once
    assert all(0.0 <= float(acc) <= 1.0 for _, _, acc in decided)


@pytest.fixture(scope="module")
def tiny_world_student(tmp_path_factory) -> Path:
    """The world's LCD student, distilled for 2 steps only (the table's starting point)."""
    folder = tmp_path_factory.mktemp("student")
    student = subprocess.run(
        [sys.executable, "-c", "from rewardkit.world.tuning_run import world_student; "
         f"print(world_student({str(folder)!r}, steps=2))"],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert student.returncode == 0, student.stderr[-2000:]
    return folder / "pipeline"


def test_alignment_table_trains_each_row_on_its_budget_and_counts_expert_calls(
        tmp_path, tiny_world_student):
    """Two rows of the table (a frozen LRM: no expert call; DRaFT through a from-scratch LRM on
    the scorer) from a student distilled for 2 steps, on a budget of 3 CPU seconds."""
    result = run("alignment_table.py", "--quick", "--seeds", "0", "--num-images", "4",
                 "--student", str(tiny_world_student),
                 "--output", str(tmp_path / "out"), "--only", "rg-lcd lrm frozen",
                 "draft lrm b20", out=tmp_path / "a.json")
    rows = {r["row"]: r for r in result["runs"]}
    assert set(rows) == {"student", "rg-lcd lrm frozen", "draft lrm b20"}
    assert rows["rg-lcd lrm frozen"]["expert_images"] == 0  # never updated: never judged
    assert rows["draft lrm b20"]["expert_images"] > 0
    for row in rows.values():
        assert all(0.0 <= row[f"judge@{s}"] <= 1.0 for s in (1, 2, 4)) and row["diversity"] > 0
    trained = [rows["rg-lcd lrm frozen"], rows["draft lrm b20"]]
    assert all(r["steps"] >= 1 and 0.04 < r["train_minutes"] for r in trained)
    assert (tmp_path / "out" / "table.md").read_text().count("\n| ") == 3  # a line per row


def test_draft_world_sweep_scores_each_setting_on_validation_captions(tmp_path, tiny_world_student):
    """One setting of the sweep that chose draft's world defaults, beside the untuned student."""
    result = run("draft_world_sweep.py", "--quick", "--num-images", "4",
                 "--student", str(tiny_world_student), "--output", str(tmp_path / "out"),
                 "--only", "lr 3e-5, lcd 1", out=tmp_path / "s.json")
    rows = {r["setting"]: r for r in result["results"]}
    assert set(rows) == {"student", "lr 3e-5, lcd 1"}
    for row in rows.values():
        assert all(0.0 <= row[f"judge@{s}"] <= 1.0 and row[f"fd@{s}"] >= 0 for s in (1, 2, 4))
    config = json.loads((tmp_path / "out" / "lr3e-5-lcd1" / "config.json").read_text())
    assert config["learning_rate"] == 3e-5 and config["lcd_weight"] == 1.0
    table = (tmp_path / "out" / "table.md").read_text()
    assert "validation captions" in table and table.count("\n| ") == 2  # a line per setting


def test_remote_reward_benchmark_times_both_paths(tmp_path):
    result = run("remote_reward.py", "--rewards", "rule-judge", "--rounds", "1", "--batch", "2",
                 "--side", "16", "--clients", "1,2", "--encodings", "float32",
                 out=tmp_path / "r.json")
    rows = result["rewards"]["rule-judge"]
    assert {(r["where"], r["clients"]) for r in rows} == {
        (w, c) for w in ("in process", "remote") for c in (1, 2)}
    assert all(r["images_per_s"] > 0 and r["ms_per_call_median"] > 0 for r in rows)
    assert "added_ms_per_step" in next(r for r in rows if r["where"] == "remote"
                                       and r["clients"] == 1)


def test_speedup_under_load_measures_idle_and_loaded(tmp_path):
    """Toy sizes (2 images, 1 round, 2 teacher steps): the structure and the figures' signs,
    not the speed-ups themselves."""
    import math

    result = run("speedup_under_load.py", "--quick", "--load", "1", "--threads", "1",
                 out=tmp_path / "s.json")
    assert list(result["conditions"]) == ["idle", "loaded (1 busy)"]
    for condition in result["conditions"].values():
        assert [r["row"] for r in condition["rows"]] == ["teacher 2", "student 1", "student 2"]
        assert condition["seconds"] > 0
        for row in condition["rows"]:
            for key in ("ms_per_image", "ms_per_image_min", "ms_per_image_max", "speedup",
                        "speedup_min", "speedup_max", "sampling_pass_ms_per_image",
                        "sampling_pass_speedup"):
                assert math.isfinite(row[key]) and row[key] > 0, (row["row"], key, row[key])
            assert row["ms_per_image_min"] <= row["ms_per_image"] <= row["ms_per_image_max"]
            assert 0.0 <= row["judge_reward"] <= 1.0
        teacher = condition["rows"][0]
        assert teacher["speedup"] == pytest.approx(1.0) and teacher["sampling_pass_speedup"] == 1.0
    for summary in ("max_relative_change", "median_relative_change"):
        assert set(result[summary]) == {"speedup", "sampling_pass_speedup"}
        assert all(math.isfinite(v) and v >= 0 for v in result[summary].values())
    assert "torch" in result["machine"]


def test_flow_world_compares_the_flow_teacher_with_its_students(tmp_path):
    """A tiny flow teacher built on the world, lcd and rg-lcd through the LRM learning the
    judge, each evaluated at 1/2/4 steps against the teacher with CFG."""
    result = run("flow_world.py", "--quick", "--seeds", "0", "--output", str(tmp_path / "out"),
                 out=tmp_path / "f.json")
    rows = {(r["model"], r["steps"]): r for r in result["rows"]}
    assert set(rows) == {("teacher", 4)} | {(m, s) for m in ("lcd", "rg-lcd lrm")
                                            for s in (1, 2, 4)}
    for row in rows.values():
        assert 0.0 <= row["judge_reward"] <= 1.0 and row["frechet_distance"] >= 0
        assert row["ms_per_image"] > 0 and row["speedup"] > 0
    assert 0.0 <= rows[("rg-lcd lrm", 2)]["lrm_heldout_accuracy"] <= 1.0
    assert (tmp_path / "out" / "world" / "teacher-flow" / "model_index.json").is_file()
    assert (tmp_path / "out" / "table.md").read_text().count("\n| ") == 7  # a line per row
    # a rerun reuses a finished run only when it was distilled with the same settings
    lcd_done = tmp_path / "out" / "lcd" / "seed-0" / "flow_world.json"
    rg_done = tmp_path / "out" / "rg-lcd-lrm" / "seed-0" / "flow_world.json"
    stale = json.loads(lcd_done.read_text())
    assert stale["settings"]["max_train_steps"] == 2
    stale["settings"]["max_train_steps"] = 99
    lcd_done.write_text(json.dumps(stale))
    kept = rg_done.read_text()
    run("flow_world.py", "--quick", "--seeds", "0", "--output", str(tmp_path / "out"),
        out=tmp_path / "again.json")
    assert json.loads(lcd_done.read_text())["settings"]["max_train_steps"] == 2  # distilled again
    assert rg_done.read_text() == kept  # reused
