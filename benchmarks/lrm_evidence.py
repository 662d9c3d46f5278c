"""Does the latent proxy RM work? Multi-seed evidence on the embedded world.

Trains, with several seeds per row, the students below from the shipped world teacher (each run
is the default ``rewardkit run rg-lcd`` config with the changes shown), evaluates every student
and the teacher on the same test prompts, and prints **mean ± std over seeds** of the judge
reward, the scorer reward (``world-scorer``), the Frechet distance and the LRM's final held-out
accuracy (``proxy_heldout_accuracy`` from the run's ``metrics.jsonl``):

=======================  =====================================================================
lcd                      plain latent consistency distillation
direct b1                RG-LCD optimising the differentiable ``world-scorer`` directly, beta 1
lrm-scratch b1           the LRM learning ``world-judge`` from a random init, the paper's online
                         schedule (one update per step on fresh candidates, no replay)
lrm-pretrained b1        the default run: the shipped pretrained LRM learning ``world-judge``
direct b20               direct optimisation of ``world-scorer`` at the over-optimisation beta 20
lrm-scorer b20           the LRM learning ``world-scorer`` at beta 20, from scratch with the
                         paper's online schedule (the shipped LRM and its rehearsal pairs were
                         made with the judge)
=======================  =====================================================================

Then it states, from the figures, whether (1) the LRM beats plain LCD on judge reward at 2 steps
by more than the seed-to-seed std, and (2) at beta 20 the LRM run keeps the judge reward and the
Frechet distance closer to the teacher's than direct optimisation does. Nothing is tuned to make
either hold. Runs are kept under ``--output``; a rerun reuses finished ones (``--retrain`` to
train again), so the table can be built up over several sessions with ``--only``.

    python benchmarks/lrm_evidence.py                          # 6 rows x 3 seeds: ~1.8 h on 2 cores
    python benchmarks/lrm_evidence.py --only lcd "lrm-pretrained b1" --seeds 0 1 2
    python benchmarks/lrm_evidence.py --quick                  # smoke run: minutes, not evidence
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

#: (row, recipe, config changes on top of the default world run).
#: An LRM that starts from scratch (no shipped LRM, no rehearsal pairs) on the paper's online
#: schedule, ``rewardkit.world.default_run.SCRATCH_LRM_SCHEDULE`` (what the default run itself
#: switches to when its expert is not the judge); the default run's own schedule (proxy_lr 1e-4,
#: replay, rehearsal) is tuned for the pretrained LRM.
SCRATCH_SCHEDULE: dict[str, Any] = {"scratch": True}
ROWS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("lcd", "lcd", {}),
    ("direct b1", "rg-lcd", {"reward": "world-scorer", "proxy": "none"}),
    ("lrm-scratch b1", "rg-lcd", dict(SCRATCH_SCHEDULE)),
    ("lrm-pretrained b1", "rg-lcd", {}),
    ("direct b20", "rg-lcd", {"reward": "world-scorer", "proxy": "none", "reward_scale": 20.0}),
    ("lrm-scorer b20", "rg-lcd", {"reward": "world-scorer", "reward_scale": 20.0,
                                 **SCRATCH_SCHEDULE}),
)
EVAL_STEPS = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="*", default=None, help="rows to train (names as above)")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps (default 600)")
    parser.add_argument("--num-images", type=int, default=None, help="test prompts (default 128)")
    parser.add_argument("--quick", action="store_true", help="a smoke run (20 steps, 16 images)")
    parser.add_argument("--output", type=Path, default=Path("runs/lrm_evidence"))
    parser.add_argument("--retrain", action="store_true", help="train finished runs again")
    parser.add_argument("--assets-root", type=Path, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    args.steps = args.steps or (20 if args.quick else 600)
    args.num_images = args.num_images or (16 if args.quick else 128)
    return args


def row_overrides(name: str, recipe: str, changes: dict[str, Any], seed: int,
                  args: argparse.Namespace) -> dict[str, Any]:
    """The full config of one (row, seed) run."""
    from paper_table import run_config

    from rewardkit.world.default_run import SCRATCH_LRM_SCHEDULE
    from rewardkit.world.lrm import WORLD_LRM_PARAMS

    changes = dict(changes)
    scratch = changes.pop("scratch", False)
    ns = argparse.Namespace(**{**vars(args), "seed": seed,
                               "output": args.output / f"seed-{seed}"})
    overrides = run_config(name, recipe, changes, ns)
    if scratch:
        for key in ("pretrained_proxy", "proxy_rehearsal_set"):
            overrides.pop(key, None)
        overrides["proxy_params"] = dict(WORLD_LRM_PARAMS)
        overrides.update(SCRATCH_LRM_SCHEDULE)
    overrides["validation_steps"] = args.steps  # held-out accuracy at the end (and before step 1)
    overrides["validation_prompts"] = overrides.get("validation_prompts", [])[:1]
    return overrides


def final_heldout(run_dir: Path) -> float | None:
    from rewardkit.training.metrics import read_metrics

    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    rows = [r for r in read_metrics(path) if "proxy_heldout_accuracy" in r]
    return float(rows[-1]["proxy_heldout_accuracy"]) if rows else None


def mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def fmt(values: list[float], digits: int = 3) -> str:
    """``mean ± std`` over seeds; ``-`` where there is nothing to show (no values, or NaN ones:
    a ratio with no denominator, such as the gain per expert call of a run that made none)."""
    if not values or any(math.isnan(v) for v in values):
        return "-"
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    from paper_table import train

    from rewardkit.world.assets import TEACHER, asset_path
    from rewardkit.world.evaluate import WorldEvaluator

    began = time.perf_counter()
    runs: dict[str, dict[int, Path]] = {}
    for name, recipe, changes in ROWS:
        for seed in args.seeds:
            overrides = row_overrides(name, recipe, changes, seed, args)
            run_dir = Path(overrides["output_dir"])
            done = (run_dir / "pipeline").is_dir() and not args.retrain
            wanted = args.only is None or name in args.only
            if wanted and not done:
                train(f"{name} seed {seed}", recipe, overrides)
                done = True
            if done or (run_dir / "pipeline").is_dir():
                runs.setdefault(name, {})[seed] = run_dir

    print("\n=== evaluating", flush=True)
    evaluator = WorldEvaluator(num_images=args.num_images, seed=0, assets_root=args.assets_root,
                               device=args.device)
    teacher = evaluator.evaluate(asset_path(TEACHER, args.assets_root), "teacher", 50,
                                 name="teacher", batch_size=args.eval_batch_size)[0]
    results: dict[str, dict[str, list[float]]] = {}
    per_run = []
    for name, seeds in runs.items():
        metrics: dict[str, list[float]] = {"judge": [], "scorer": [], "fd": [], "heldout": []}
        for seed, run_dir in sorted(seeds.items()):
            row = evaluator.evaluate(run_dir / "pipeline", "student", EVAL_STEPS, name=name,
                                     batch_size=args.eval_batch_size)[0]
            heldout = final_heldout(run_dir)
            metrics["judge"].append(row.judge_reward)
            metrics["scorer"].append(row.scorer_reward)
            metrics["fd"].append(row.frechet_distance)
            if heldout is not None:
                metrics["heldout"].append(heldout)
            per_run.append({"row": name, "seed": seed, "judge_reward": row.judge_reward,
                            "scorer_reward": row.scorer_reward,
                            "frechet_distance": row.frechet_distance,
                            "proxy_heldout_accuracy": heldout})
        results[name] = metrics

    lines = ["| model | seeds | judge reward ↑ | scorer reward ↑ | Frechet distance ↓ | "
             "LRM held-out accuracy ↑ |", "|---|---:|---:|---:|---:|---:|",
             f"| teacher (50 DDIM steps + CFG) | - | {teacher.judge_reward:.3f} | "
             f"{teacher.scorer_reward:.3f} | {teacher.frechet_distance:.1f} | - |"]
    for name, m in results.items():
        lines.append(f"| {name} @{EVAL_STEPS} | {len(m['judge'])} | {fmt(m['judge'])} | "
                     f"{fmt(m['scorer'])} | {fmt(m['fd'], 1)} | {fmt(m['heldout'])} |")
    lines += ["", *verdicts(results, teacher)]
    command = "python benchmarks/lrm_evidence.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    lines += ["", f"command: `{command.strip()}`; {args.steps} steps, {args.num_images} test prompts, "
              f"mean ± std over seeds; {(time.perf_counter() - began) / 60:.1f} min"]
    write_results(args.output, lines, per_run, "runs.json")
    return 0


def write_results(output: Path, lines: list[str], data: Any, json_name: str) -> None:
    """``output/table.md`` (the lines) and ``output/{json_name}`` (the data); prints the table."""
    text = "\n".join(lines)
    output.mkdir(parents=True, exist_ok=True)
    (output / "table.md").write_text(text + "\n")
    (output / json_name).write_text(json.dumps(data, indent=2))
    print("\n" + text)


def verdicts(results: dict[str, dict[str, list[float]]], teacher: Any) -> list[str]:
    """The two questions of the benchmark, answered from the figures (or 'not measured')."""
    out = []
    lrm, lcd = results.get("lrm-pretrained b1"), results.get("lcd")
    if lrm and lcd and len(lrm["judge"]) > 1 and len(lcd["judge"]) > 1:
        (a, sa), (b, sb) = mean_std(lrm["judge"]), mean_std(lcd["judge"])
        holds = a - b > max(sa, sb)
        out.append(f"{'HOLDS' if holds else 'DOES NOT HOLD'}: the pretrained LRM beats plain LCD "
                   f"on judge reward at {EVAL_STEPS} steps by more than the seed std "
                   f"({a:.3f} ± {sa:.3f} vs {b:.3f} ± {sb:.3f}, difference {a - b:+.3f})")
    else:
        out.append("not measured: LRM vs LCD needs both rows with >= 2 seeds")
    direct, guarded = results.get("direct b20"), results.get("lrm-scorer b20")
    if direct and guarded:
        gaps = {key: (abs(mean_std(direct[key])[0] - ref), abs(mean_std(guarded[key])[0] - ref))
                for key, ref in (("judge", teacher.judge_reward), ("fd", teacher.frechet_distance))}
        holds = all(g < d for d, g in gaps.values())
        out.append(f"{'HOLDS' if holds else 'DOES NOT HOLD'}: at beta 20 the LRM keeps judge "
                   f"reward and Frechet distance closer to the teacher's than direct optimisation "
                   f"(|judge - teacher|: direct {gaps['judge'][0]:.3f}, LRM {gaps['judge'][1]:.3f}; "
                   f"|FD - teacher|: direct {gaps['fd'][0]:.1f}, LRM {gaps['fd'][1]:.1f})")
    else:
        out.append("not measured: the beta-20 rows were not trained")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
