"""Which alignment recipe wins at equal cost? Distillation, reward back-propagation and RL on
the embedded world, from the same LCD student, over several seeds.

Every row starts from the same distilled student (the world's LCD student, ``rewardkit run
lcd``'s 400 steps on the shipped teacher, made once and shared) and trains for the same
budget of training steps (``max_train_minutes`` on the process clock: the run's CPU time, so
rows compare at equal compute even on a machine shared with other work; validations and
checkpoints are not counted), with each recipe's own world settings (what ``rewardkit run
RECIPE`` does with no arguments) and only the changes shown:

=====================  ========================================================================
student                the starting LCD student, not tuned (the baseline every row starts from)
*expert: world-judge (not differentiable), so every gradient method goes through a proxy*
rg-lcd lrm             RG-LCD with the shipped pretrained LRM learning the judge online
rg-lcd lrm frozen      the same LRM, never updated (``proxy_update_every`` beyond the run): what
                       does learning online add?
draft lrm              DRaFT-1 through the same pretrained LRM, learning the judge online
grpo                   group-relative policy optimisation on the judge's scores themselves
*expert: world-scorer (differentiable, learned: exploitable) at beta 20, where direct
optimisation over-optimises it; the judge is the gold RM none of these rows trains on*
draft direct b20       DRaFT-1 on the scorer's own gradient
draft lrm b20          DRaFT-1 through an LRM learning the scorer from scratch
rg-lcd direct b20      RG-LCD on the scorer's own gradient
rg-lcd lrm b20         RG-LCD through an LRM learning the scorer from scratch (the paper's
                       online schedule)
=====================  ========================================================================

Each trained student is evaluated on the same held-out test prompts and seeds (``rewardkit
eval``'s world metrics): the judge reward at 1, 2 and 4 steps, the scorer's, the Frechet
distance to real renders, and the diversity of one prompt's samples over four seeds (mean
pairwise RMS distance, at 2 steps). From each run's ``metrics.jsonl``: the steps it reached in
the budget and the **expert RM calls** (``expert_images``: images the expert scored, the
held-out set's included), hence the judge gain per 1,000 expert calls. Mean ± std over seeds.
Nothing here is tuned to make a row win: each recipe runs with its world defaults.

    python benchmarks/alignment_table.py                      # 9 rows x 3 seeds, 2 min each: ~1.5 h
    python benchmarks/alignment_table.py --only grpo "draft lrm" --seeds 0 1 2
    python benchmarks/alignment_table.py --quick              # smoke run: minutes, not evidence

Runs are kept under ``--output``; a rerun reuses finished ones (``--retrain`` to train again),
so the table can be built over several sessions, or by several processes at once (each with its
own ``--seeds`` and ``--train-only``, then one run to evaluate). The steps each row reached in its budget are
in the table: a cheap step (GRPO's reuse of a rollout, a frozen proxy) buys more of them.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

#: A proxy update period no run reaches: the LRM stays as it was loaded.
NEVER = 10 ** 9
#: Steps no run reaches in its budget (the budget ends every run).
UNBOUNDED_STEPS = 10 ** 6
#: beta where optimising the learned scorer directly over-optimises it
#: (``benchmarks/lrm_evidence.py``'s "direct b20" row).
OVER_OPTIMISING_BETA = 20.0
SCORER = {"reward": "world-scorer", "reward_scale": OVER_OPTIMISING_BETA}

#: (row, expert group, recipe or None for the untuned student, changes on the recipe's world
#: settings; "scratch": the LRM starts from scratch instead of the shipped judge-trained one).
ROWS: tuple[tuple[str, str, str | None, dict[str, Any]], ...] = (
    ("student", "start", None, {}),
    ("rg-lcd lrm", "judge", "rg-lcd", {}),
    ("rg-lcd lrm frozen", "judge", "rg-lcd", {"proxy_update_every": NEVER,
                                              "proxy_eval_num_prompts": 0}),
    ("draft lrm", "judge", "draft", {}),
    ("grpo", "judge", "grpo", {}),
    ("draft direct b20", "scorer", "draft", {**SCORER, "proxy": "none"}),
    ("draft lrm b20", "scorer", "draft", {**SCORER, "proxy": "lrm", "scratch": True}),
    ("rg-lcd direct b20", "scorer", "rg-lcd", {**SCORER, "proxy": "none"}),
    ("rg-lcd lrm b20", "scorer", "rg-lcd", {**SCORER, "proxy": "lrm"}),
)
STEPS = (1, 2, 4)
MAIN_STEPS = 2
DIVERSITY_PROMPTS, DIVERSITY_SEEDS = 8, 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="*", default=None, help="rows to train (names as above)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="CPU minutes of training steps per run (default 2)")
    parser.add_argument("--num-images", type=int, default=None, help="test prompts (default 128)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run (a few seconds per run, 8 test prompts)")
    parser.add_argument("--student", type=Path, default=None,
                        help="the starting student's pipeline (default: the world's LCD student)")
    parser.add_argument("--output", type=Path, default=Path("runs/alignment_table"))
    parser.add_argument("--retrain", action="store_true", help="train finished runs again")
    parser.add_argument("--eval-batch-size", type=int, default=16)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--train-only", action="store_true",
                        help="train the missing runs and stop (another process evaluates; "
                             "give each process its own --seeds)")
    args = parser.parse_args(argv)
    args.minutes = args.minutes or (0.05 if args.quick else 2.0)
    args.num_images = args.num_images or (8 if args.quick else 128)
    return args


def run_overrides(recipe: str, changes: dict[str, Any], student: Path, seed: int,
                  output_dir: Path, minutes: float) -> dict[str, Any]:
    """The full config of one (row, seed) run: the recipe's world settings, then ``changes``."""
    from rewardkit.world.assets import SCORER as SCORER_ASSET, asset_path
    from rewardkit.world.default_run import default_rg_lcd_overrides, fit_world_defaults
    from rewardkit.world.lrm import WORLD_LRM_PARAMS
    from rewardkit.world.tuning_run import world_tuning_overrides

    changes = dict(changes)
    scratch = changes.pop("scratch", False)
    if recipe == "rg-lcd":  # its own world fitting picks the LRM's start and schedule
        overrides = fit_world_defaults(default_rg_lcd_overrides(), changes)
    else:
        overrides = world_tuning_overrides(recipe, {"pretrained_student": str(student)})
        if changes.get("proxy") == "none" or scratch:
            for key in ("pretrained_proxy", "proxy_params", "proxy_lr"):
                overrides.pop(key, None)
        if scratch:  # the paper's online schedule for an LRM that starts from nothing
            overrides.update(proxy_params=dict(WORLD_LRM_PARAMS), proxy_lr=1e-3)
    overrides.update(changes)
    if overrides.get("reward") == "world-scorer":
        overrides["reward_params"] = {"path": str(asset_path(SCORER_ASSET))}
    overrides.update(
        pretrained_student=str(student), output_dir=str(output_dir), seed=seed,
        max_train_steps=UNBOUNDED_STEPS, max_train_minutes=minutes, train_time_clock="process",
        validation_steps=0,
        gold_panel=[], guard_fd_metric=None, checkpointing_steps=0, report_to="none",
        overwrite_output_dir=True)
    return overrides


def run_figures(run_dir: Path) -> dict[str, float]:
    """Steps reached, minutes of training steps and expert images, from ``metrics.jsonl``."""
    from rewardkit.training.metrics import read_metrics

    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if "step_time" in r]
    return {"steps": float(rows[-1]["step"]) if rows else 0.0,
            "train_minutes": sum(r["step_time"] for r in rows) / 60,
            "expert_images": float(rows[-1].get("expert_images", 0)) if rows else 0.0}


def diversity_of(evaluator: Any, pipeline: Path, batch_size: int) -> float:
    """Mean pairwise distance of each diversity prompt's samples over its seeds, at 2 steps."""
    import numpy as np
    import torch

    from rewardkit.training.guard import diversity

    row = evaluator.evaluate(pipeline, "student", MAIN_STEPS, keep_images=True,
                             batch_size=batch_size)[0]
    images = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)
                          .permute(2, 0, 1) for im in row.images])
    return diversity(images, DIVERSITY_PROMPTS)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    import rewardkit as rk
    from lrm_evidence import fmt, mean_std, write_results

    from rewardkit.world.eval_sets import evaluation_prompts
    from rewardkit.world.evaluate import WorldEvaluator
    from rewardkit.world.tuning_run import world_student

    began = time.perf_counter()
    student = args.student or world_student()
    runs: dict[str, dict[int, Path]] = {}
    # seed-major: a table cut short has every row at fewer seeds, not some rows at none
    for seed in args.seeds:
        for name, _, recipe, changes in ROWS:
            if recipe is None:
                continue
            run_dir = args.output / f"seed-{seed}" / name.replace(" ", "-")
            done = (run_dir / "pipeline").is_dir() and not args.retrain
            if (args.only is None or name in args.only) and not done:
                print(f"\n=== {name}, seed {seed} ({recipe}, {args.minutes:g} min)", flush=True)
                rk.recipe(recipe, run_overrides(recipe, changes, student, seed, run_dir,
                                                args.minutes)).run(progress=True)
            if (run_dir / "pipeline").is_dir():
                runs.setdefault(name, {})[seed] = run_dir

    if args.train_only:
        return 0
    print("\n=== evaluating", flush=True)
    evaluator = WorldEvaluator(num_images=args.num_images, seed=0)
    prompts = evaluation_prompts(DIVERSITY_PROMPTS, "test", 0)
    spread = WorldEvaluator([p for p in prompts for _ in range(DIVERSITY_SEEDS)], seed=0)

    def measure(pipeline: Path) -> dict[str, Any]:
        rows = evaluator.evaluate(pipeline, "student", STEPS, batch_size=args.eval_batch_size)
        by_steps = {r.steps: r for r in rows}
        return {**{f"judge@{s}": by_steps[s].judge_reward for s in STEPS},
                "scorer@2": by_steps[MAIN_STEPS].scorer_reward,
                "fd@2": by_steps[MAIN_STEPS].frechet_distance,
                "diversity": diversity_of(spread, pipeline, args.eval_batch_size)}

    base = measure(student)
    per_run: list[dict[str, Any]] = [{"row": "student", "seed": None, **base}]
    results: dict[str, dict[str, list[float]]] = {"student": {k: [v] for k, v in base.items()}}
    for name, seeds in runs.items():
        for seed, run_dir in sorted(seeds.items()):
            figures = {**measure(run_dir / "pipeline"), **run_figures(run_dir)}
            calls = figures["expert_images"]
            gain = figures[f"judge@{MAIN_STEPS}"] - base[f"judge@{MAIN_STEPS}"]
            figures["gain_per_1k_calls"] = 1000 * gain / calls if calls else float("nan")
            per_run.append({"row": name, "seed": seed, **figures})
            for key, value in figures.items():
                results.setdefault(name, {}).setdefault(key, []).append(value)

    lines = ["| row | expert | seeds | judge @1 ↑ | judge @2 ↑ | judge @4 ↑ | scorer @2 | FD @2 ↓ "
             "| diversity | steps | expert calls | judge gain / 1k calls |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, group, _, _ in ROWS:
        m = results.get(name)
        if not m:
            continue
        cells = [fmt(m.get(k, [])) for k in ("judge@1", "judge@2", "judge@4", "scorer@2")]
        extra = ([fmt(m["steps"], 0), fmt(m["expert_images"], 0), fmt(m["gain_per_1k_calls"], 4)]
                 if "steps" in m else ["-", "-", "-"])
        lines.append(f"| {name} | {group} | {len(m['judge@2'])} | {' | '.join(cells)} | "
                     f"{fmt(m['fd@2'], 1)} | {fmt(m['diversity'])} | {' | '.join(extra)} |")
    lines += ["", *verdicts(results, mean_std)]
    command = "python benchmarks/alignment_table.py " + shlex.join(
        argv if argv is not None else sys.argv[1:])
    lines += ["", f"command: `{command.strip()}`; {args.minutes:g} min of training steps per "
              f"run, {args.num_images} test prompts, mean ± std over seeds; "
              f"{(time.perf_counter() - began) / 60:.1f} min in all"]
    write_results(args.output, lines, per_run, "runs.json")
    if args.json:
        import json

        args.json.write_text(json.dumps({"runs": per_run}, indent=2))
    return 0


def verdicts(results: dict[str, dict[str, list[float]]], mean_std: Any) -> list[str]:
    """Which row wins each expert group on the judge at 2 steps, and whether the LRM kept the
    scorer rows from over-optimising (judge and FD against their direct twins)."""
    key = f"judge@{MAIN_STEPS}"

    def mean(name: str, metric: str = key) -> float | None:
        values = results.get(name, {}).get(metric)
        return mean_std(values)[0] if values else None

    lines = []
    for group in ("judge", "scorer"):
        names = [n for n, g, _, _ in ROWS if g == group and n in results]
        if names:
            best = max(names, key=lambda n: mean(n))
            _, spread = mean_std(results[best][key])
            lines.append(f"- expert {group}: highest judge reward at {MAIN_STEPS} steps: {best} "
                         f"({mean(best):.3f} ± {spread:.3f}; the untuned student "
                         f"{mean('student'):.3f})")
    for recipe in ("draft", "rg-lcd"):
        direct, lrm = f"{recipe} direct b20", f"{recipe} lrm b20"
        if direct in results and lrm in results:
            better = mean(lrm) > mean(direct)
            closer = mean(lrm, "fd@2") < mean(direct, "fd@2")
            lines.append(f"- {recipe} at beta {OVER_OPTIMISING_BETA:g} on the scorer: the LRM "
                         f"{'kept' if better else 'did not keep'} a higher gold (judge) reward "
                         f"than direct ({mean(lrm):.3f} vs {mean(direct):.3f}) and "
                         f"{'a lower' if closer else 'no lower'} FD ({mean(lrm, 'fd@2'):.1f} vs "
                         f"{mean(direct, 'fd@2'):.1f})")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
