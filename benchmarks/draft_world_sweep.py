"""How ``rewardkit run draft``'s world settings were chosen: a sweep of the learning rate and
the LCD term's weight, scored on the world's *validation* captions (never the test prompts the
alignment table reports on).

Each setting trains ``draft`` through the shipped LRM learning ``world-judge`` from the world's
LCD student for the same budget of training steps (``max_train_minutes`` on the process clock,
as ``alignment_table.py`` does), with seed 100 (no table seed), then reports the judge reward
and the Frechet distance at 1, 2 and 4 steps on 128 validation captions, next to the untuned
student. The setting with the highest judge reward at 2 steps becomes
``rewardkit.world.tuning_run.DRAFT_WORLD_SETTINGS``.

    python benchmarks/draft_world_sweep.py --student lcd-world/pipeline   # 6 runs: ~20 min
    python benchmarks/draft_world_sweep.py --quick                       # smoke run
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

#: (name, changes on draft's world settings): the learning rate alone, then with the LCD term.
SETTINGS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("lr 1e-4", {"learning_rate": 1e-4, "lcd_weight": 0.0}),
    ("lr 3e-6", {"learning_rate": 3e-6, "lcd_weight": 0.0}),
    ("lr 1e-5, lcd 1", {"learning_rate": 1e-5, "lcd_weight": 1.0}),
    ("lr 3e-5, lcd 1", {"learning_rate": 3e-5, "lcd_weight": 1.0}),
    ("lr 1e-4, lcd 1", {"learning_rate": 1e-4, "lcd_weight": 1.0}),
    ("lr 3e-5, lcd 3", {"learning_rate": 3e-5, "lcd_weight": 3.0}),
)
STEPS = (1, 2, 4)
SEED = 100


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", type=Path, default=None,
                        help="the starting student's pipeline (default: the world's LCD student)")
    parser.add_argument("--output", type=Path, default=Path("runs/draft_world_sweep"))
    parser.add_argument("--minutes", type=float, default=None,
                        help="CPU minutes of training steps per setting (default 2)")
    parser.add_argument("--num-images", type=int, default=None,
                        help="validation captions (default 128)")
    parser.add_argument("--only", nargs="+", default=None, help="settings to run (names as above)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: seconds per setting")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    args.minutes = args.minutes or (0.05 if args.quick else 2.0)
    args.num_images = args.num_images or (8 if args.quick else 128)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    import json

    import rewardkit as rk
    from alignment_table import run_overrides
    from lrm_evidence import write_results

    from rewardkit.world.evaluate import WorldEvaluator
    from rewardkit.world.tuning_run import world_student

    began = time.perf_counter()
    student = args.student or world_student()
    evaluator = WorldEvaluator(num_images=args.num_images, split="validation", seed=0)

    def measure(pipeline: Path) -> dict[str, float]:
        rows = evaluator.evaluate(pipeline, "student", STEPS, batch_size=16)
        return {**{f"judge@{r.steps}": r.judge_reward for r in rows},
                **{f"fd@{r.steps}": r.frechet_distance for r in rows}}

    results: list[dict[str, Any]] = [{"setting": "student", **measure(student)}]
    for name, changes in SETTINGS:
        if args.only is not None and name not in args.only:
            continue
        run_dir = args.output / name.replace(", ", "-").replace(" ", "")
        if not (run_dir / "pipeline").is_dir():
            print(f"\n=== draft, {name} ({args.minutes:g} min)", flush=True)
            overrides = run_overrides("draft", changes, student, SEED, run_dir, args.minutes)
            rk.recipe("draft", overrides).run(progress=False)
        results.append({"setting": name, **measure(run_dir / "pipeline")})

    lines = ["| setting | judge @1 | judge @2 ↑ | judge @4 | FD @1 | FD @2 ↓ | FD @4 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['setting']} | " + " | ".join(f"{r[f'judge@{s}']:.3f}" for s in STEPS)
                     + " | " + " | ".join(f"{r[f'fd@{s}']:.1f}" for s in STEPS) + " |")
    best = max(results[1:], key=lambda r: r["judge@2"], default=None)
    if best is not None:
        lines += ["", f"highest judge reward at 2 steps on the validation captions: {best['setting']}"]
    command = "python benchmarks/draft_world_sweep.py " + shlex.join(
        argv if argv is not None else sys.argv[1:])
    lines += ["", f"command: `{command.strip()}`; {args.minutes:g} min of training steps per "
              f"setting, seed {SEED}, {args.num_images} validation captions; "
              f"{(time.perf_counter() - began) / 60:.1f} min in all"]
    write_results(args.output, lines, results, "sweep.json")
    if args.json:
        args.json.write_text(json.dumps({"results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
