"""The paper's table at small scale, on the embedded world (Li et al., TMLR 2024, Table 1 / Fig. 3).

Trains four students from the same world teacher, with the same seeds, data order and number of
steps, then evaluates all of them and the teacher on the same test prompts and seeds, in one
process (so the milliseconds are comparable):

=====================  ========================================================================
teacher                the shipped teacher, 50 DDIM steps + classifier-free guidance
lcd                    plain latent consistency distillation (recipe ``lcd``)
rg-lcd direct scorer   RG-LCD optimising ``world-scorer`` directly (differentiable, exploitable)
rg-lcd lrm scorer      RG-LCD with the latent proxy RM (LRM) learning from ``world-scorer``
rg-lcd lrm judge       RG-LCD with the LRM learning from ``world-judge`` (non-differentiable)
=====================  ========================================================================

Each student is sampled at 1, 2 and 4 steps. It prints one table (judge reward, scorer reward,
Frechet distance, ms/image, speed-up over the teacher), saves it with the image grid and every
run's report under ``--output``, and checks four claims, printing PASS or FAIL for each with
the numbers behind it. Nothing is tuned to make a claim hold. Sampling speed is timed after
sampling, every row in turn on one batch for ``--timing-rounds`` rounds
(:mod:`rewardkit.evaluation.timing`): ms/image is the median over the rounds and the speed-up
the median of the per-round ratios, so load on the machine cannot invent one.

    python benchmarks/paper_table.py                    # 16 min on 2 CPU cores
    python benchmarks/paper_table.py --quick            # a few minutes: smoke run, claims not meaningful
    python benchmarks/paper_table.py --steps 300 --num-images 128 --output runs/paper_table

``--assets-root`` evaluates another built world (default: the shipped assets of ``rewardkit world
build``). Only the judge reward carries a standard error; a claim decided by less than two
standard errors is marked "(within noise)".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The students of the table: (name, recipe, config changes on top of the default world run).
VARIANTS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("lcd", "lcd", {}),
    ("rg-lcd direct scorer", "rg-lcd", {"reward": "world-scorer", "proxy": "none"}),
    ("rg-lcd lrm scorer", "rg-lcd", {"reward": "world-scorer", "proxy": "lrm"}),
    ("rg-lcd lrm judge", "rg-lcd", {"reward": "world-judge", "proxy": "lrm"}),
)


def rg_only_keys() -> set[str]:
    """Keys only the rg-lcd recipe knows (dropped for plain lcd)."""
    import dataclasses

    from rewardkit.recipes.rg_lcd import RGLCDConfig
    from rewardkit.recipes.lcd_config import LCDConfig

    return ({f.name for f in dataclasses.fields(RGLCDConfig)}
            - {f.name for f in dataclasses.fields(LCDConfig)})


MAIN = "rg-lcd lrm judge"
STUDENT_STEPS = (1, 2, 4)


@dataclass
class Claim:
    """One of the claims, its verdict and the numbers behind it."""

    text: str
    passed: bool
    evidence: str
    noisy: bool = False
    details: list[str] = field(default_factory=list)

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        noise = " (within noise)" if self.noisy else ""
        return f"{verdict}{noise}: {self.text}\n    {self.evidence}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None,
                        help="optimiser steps per student (default 600; --quick: 20)")
    parser.add_argument("--quick", action="store_true", help="a few-minute smoke run")
    parser.add_argument("--num-images", type=int, default=None,
                        help="test prompts evaluated per row (default 128; --quick: 16)")
    parser.add_argument("--batch-size", type=int, default=32, help="training batch size")
    parser.add_argument("--eval-batch-size", type=int, default=16, help="sampling batch size")
    parser.add_argument("--teacher-steps", type=int, default=50, help="teacher DDIM steps")
    parser.add_argument("--seed", type=int, default=0, help="seed of every run and evaluation")
    parser.add_argument("--assets-root", type=Path, default=None,
                        help="a built world (default: the shipped assets)")
    parser.add_argument("--output", type=Path, default=Path("runs/paper_table"),
                        help="where runs, table.md, eval.json and grids go")
    parser.add_argument("--only", nargs="*", default=None,
                        help="train only these variants (names as in the table)")
    parser.add_argument("--skip-training", action="store_true",
                        help="reuse the students already in --output")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--timing-rounds", type=int, default=5,
                        help="interleaved rounds timing sampling speed (median and spread)")
    args = parser.parse_args(argv)
    args.steps = args.steps or (20 if args.quick else 600)
    args.num_images = args.num_images or (16 if args.quick else 128)
    return args


def run_config(name: str, recipe: str, changes: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The full override set of one variant."""
    from rewardkit.world.assets import SCORER, asset_path
    from rewardkit.world.default_run import default_rg_lcd_overrides, fit_world_defaults

    output_dir = args.output / name.replace(" ", "-")
    overrides = default_rg_lcd_overrides(args.assets_root, str(output_dir), args.steps)
    overrides.update(train_batch_size=args.batch_size, seed=args.seed, checkpointing_steps=0,
                     validation_steps=0)
    if args.quick:
        overrides.update(proxy_batch_size=4)
    overrides = fit_world_defaults(overrides, changes)
    overrides.update(changes)
    if overrides.get("reward") == "world-scorer":
        overrides["reward_params"] = {"path": str(asset_path(SCORER, args.assets_root))}
    if recipe == "lcd":
        for key in rg_only_keys():
            overrides.pop(key, None)
    return overrides


def train(name: str, recipe: str, overrides: dict[str, Any]) -> tuple[Path, float]:
    """Train one student; returns its pipeline folder and seconds per step."""
    from rewardkit.training.metrics import read_metrics
    import rewardkit as rk

    print(f"\n=== training {name} ({recipe}, {overrides['max_train_steps']} steps)", flush=True)
    started = time.perf_counter()
    # the benchmark decided to (re)train this run: an old one in its folder is replaced
    overrides = {**overrides, "overwrite_output_dir": True}
    output = Path(rk.recipe(recipe, overrides).run(progress=True))
    seconds = time.perf_counter() - started
    rows = read_metrics(output / "metrics.jsonl")
    step_time = sum(r.get("step_time", 0.0) for r in rows) / max(len(rows), 1)
    print(f"    {name}: {seconds:.0f} s, {step_time:.2f} s/step", flush=True)
    return output / "pipeline", step_time


def by(rows: list[Any], name: str, steps: int) -> Any:
    return next(r for r in rows if r.name == name and r.steps == steps)


def mean_over_steps(rows: list[Any], name: str, key: str) -> float:
    values = [getattr(by(rows, name, s), key) for s in STUDENT_STEPS]
    return sum(values) / len(values)


def check_claims(rows: list[Any], teacher: Any) -> list[Claim]:
    """The four claims, decided from the table (point estimates, noise flagged)."""
    import math

    claims = []
    main2, lcd2 = by(rows, MAIN, 2), by(rows, "lcd", 2)

    def se(*items: Any) -> float:
        return math.sqrt(sum(i.judge_reward_se ** 2 for i in items))

    # 1. 2-step RG-LCM >= teacher at 50 steps, and > plain LCD at 2 steps (judge reward)
    vs_teacher, vs_lcd = main2.judge_reward - teacher.judge_reward, main2.judge_reward - lcd2.judge_reward
    claims.append(Claim(
        f"2-step RG-LCM ({MAIN}) scores at least the teacher's {teacher.steps}-step judge reward "
        "and beats plain LCD at 2 steps",
        vs_teacher >= 0 and vs_lcd > 0,
        f"judge: RG-LCM@2 {main2.judge_reward:.3f}, teacher@{teacher.steps} "
        f"{teacher.judge_reward:.3f} (diff {vs_teacher:+.3f} ± {se(main2, teacher):.3f}), "
        f"LCD@2 {lcd2.judge_reward:.3f} (diff {vs_lcd:+.3f} ± {se(main2, lcd2):.3f})",
        noisy=abs(vs_teacher) < 2 * se(main2, teacher) or abs(vs_lcd) < 2 * se(main2, lcd2)))

    # 2. >= 25x faster at 2 steps than the teacher at 50 steps with CFG, timed interleaved
    speedup = main2.speedup if main2.speedup is not None else teacher.ms_per_image / main2.ms_per_image
    spread = (f" (rounds: {main2.speedup_min:.1f}-{main2.speedup_max:.1f}x)"
              if main2.speedup_min is not None else "")
    claims.append(Claim(
        f"sampling at 2 steps is at least 25x faster than the teacher at {teacher.steps} steps "
        "with CFG (same process)",
        speedup >= 25.0,
        f"{main2.ms_per_image:.1f} ms/image vs {teacher.ms_per_image:.1f} ms/image: "
        f"{speedup:.1f}x{spread} ({main2.unet_evaluations} vs {teacher.unet_evaluations} UNet "
        "evaluations per image)"))

    # 3. direct optimisation of the scorer: scorer reward up, judge down or FD up vs LCD; the LRM avoids most
    def change(name: str, key: str) -> float:
        return mean_over_steps(rows, name, key) - mean_over_steps(rows, "lcd", key)

    direct, lrm = "rg-lcd direct scorer", "rg-lcd lrm scorer"
    scorer_up = change(direct, "scorer_reward")
    harms = {"judge drop": (-change(direct, "judge_reward"), -change(lrm, "judge_reward")),
             "FD rise": (change(direct, "frechet_distance"), change(lrm, "frechet_distance"))}
    shown = {k: v for k, v in harms.items() if v[0] > 0}
    over_optimised = scorer_up > 0 and bool(shown)
    avoided = over_optimised and all(lrm_harm <= 0.5 * direct_harm for direct_harm, lrm_harm in shown.values())
    evidence = (f"vs LCD, mean over {len(STUDENT_STEPS)} step counts: direct scorer reward "
                f"{scorer_up:+.3f}; " + "; ".join(
                    f"{k}: direct {d:+.3f}, LRM {lrm_h:+.3f}" for k, (d, lrm_h) in harms.items()))
    claims.append(Claim(
        "direct optimisation of world-scorer raises the scorer reward while the judge reward or the "
        "Frechet distance gets worse, and the LRM variant avoids most of that (at most half the harm)",
        over_optimised and avoided, evidence))

    # 4. a non-differentiable RM improves the student through the LRM
    gain = change(MAIN, "judge_reward")
    gain2 = main2.judge_reward - lcd2.judge_reward
    noise = math.sqrt(sum(by(rows, n, s).judge_reward_se ** 2 for n in (MAIN, "lcd")
                          for s in STUDENT_STEPS)) / len(STUDENT_STEPS)
    claims.append(Claim(
        "the non-differentiable world-judge improves the student through the LRM (judge reward "
        "above plain LCD's)",
        gain > 0,
        f"judge vs LCD: {gain:+.3f} ± {noise:.3f} mean over 1/2/4 steps, {gain2:+.3f} at 2 steps",
        noisy=abs(gain) < 2 * noise))
    return claims


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    import torch

    from rewardkit.world.assets import TEACHER, asset_path
    from rewardkit.world.evaluate import WorldEvaluator, add_speedups, model_spec
    from rewardkit.plots import labelled_grid
    from rewardkit.world.report import format_table

    torch.manual_seed(args.seed)
    args.output.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    students: dict[str, Path] = {}
    step_times: dict[str, float] = {}
    for name, recipe, changes in VARIANTS:
        overrides = run_config(name, recipe, changes, args)
        pipeline = Path(overrides["output_dir"]) / "pipeline"
        if args.skip_training or (args.only is not None and name not in args.only):
            if pipeline.is_dir():
                students[name] = pipeline
            else:
                print(f"    {name}: no trained student at {pipeline}, left out")
            continue
        students[name], step_times[name] = train(name, recipe, overrides)
    train_seconds = time.perf_counter() - began

    print("\n=== evaluating", flush=True)
    evaluator = WorldEvaluator(num_images=args.num_images, seed=args.seed,
                               assets_root=args.assets_root, device=args.device)
    teacher_dir = asset_path(TEACHER, args.assets_root)
    models = [model_spec(teacher_dir, "teacher", args.teacher_steps, "teacher")]
    models += [model_spec(pipeline, "student", STUDENT_STEPS, name)
               for name, pipeline in students.items()]
    rows = evaluator.evaluate_models(models, batch_size=args.eval_batch_size, keep_images=True,
                                     timing_rounds=args.timing_rounds)
    add_speedups(rows)
    table = format_table(rows)

    shown = min(6, args.num_images)
    columns = [(f"{row.name} {row.steps}", row.images[:shown]) for row in rows]
    labelled_grid(columns, evaluator.prompts[:shown]).save(args.output / "grid.png")
    (args.output / "eval.json").write_text(json.dumps([r.as_dict() for r in rows], indent=2))

    command = "python benchmarks/paper_table.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [table, "", f"command: `{command.strip()}`",
             f"{args.steps} optimiser steps per student at batch {args.batch_size}, "
             f"{args.num_images} test prompts, seed {args.seed}, device {args.device}, "
             f"training {train_seconds / 60:.1f} min, total {(time.perf_counter() - began) / 60:.1f} min"]
    if step_times:
        lines.append("s/step: " + ", ".join(f"{k} {v:.2f}" for k, v in step_times.items()))
    claims = []
    if all(n in students for n, _, _ in VARIANTS):
        claims = check_claims(rows, rows[0])
        lines += ["", "Claims:"] + [c.line() for c in claims]
    else:
        lines += ["", "Claims not checked: some variants were not trained."]
    if args.quick:
        lines.append("(--quick: a smoke run; the claims need the full run to mean anything)")
    text = "\n".join(lines)
    (args.output / "table.md").write_text(text + "\n")
    print("\n" + text)
    print(f"\nwrote {args.output / 'table.md'}, {args.output / 'grid.png'}, {args.output / 'eval.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
