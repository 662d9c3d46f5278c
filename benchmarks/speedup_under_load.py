"""Does load on the machine change the default run's speed-up column? Measured idle and loaded.

The default run's report (``rewardkit run rg-lcd`` with no arguments) times the teacher
(50 DDIM steps + classifier-free guidance) and the student (1, 2, 4 steps) with
:func:`rewardkit.evaluation.timing.time_interleaved`: every row in turn on one batch, several
rounds, the median of the per-round ratios. This script measures that speed-up twice, on the
machine as it is and again while ``--load`` extra processes spin a CPU core each
(``python -c "while True: pass"``), and prints, for both, the interleaved speed-ups next to
those of the sampling pass (each model timed while its images are sampled, teacher first,
which is what a report showed before the interleaved timing).

The student's speed does not depend on its weights, so by default the student is the shipped
teacher turned into a student (its weights plus a guidance embedding, untrained): no training
is needed. ``--student`` times a trained one instead (e.g. ``rg-lcd-world/pipeline``).

    python benchmarks/speedup_under_load.py                  # idle, then 1 busy process; ~5 min on 2 cores
    python benchmarks/speedup_under_load.py --load 2 --rounds 7 --json speedups.json
    python benchmarks/speedup_under_load.py --quick          # seconds; a smoke run, figures not meaningful
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", type=Path, default=None,
                        help="a student pipeline folder (default: the shipped teacher as an untrained student)")
    parser.add_argument("--num-images", type=int, default=64, help="test prompts sampled per row (the default run's 64)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per call (the default run's 16)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (the default run's 5)")
    parser.add_argument("--teacher-steps", type=int, default=50)
    parser.add_argument("--student-steps", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--load", type=int, default=1, help="busy processes in the loaded measurement")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)),
                        help="torch threads (default: OMP_NUM_THREADS, else 2)")
    parser.add_argument("--timing-threads", type=int, default=None,
                        help="torch threads of the timing rounds (default: the default run's, "
                             "rewardkit.world.default_run.REPORT_TIMING_THREADS)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--quick", action="store_true",
                        help="toy sizes (2 images, 1 round, a 2-step teacher, 1- and 2-step students) "
                             "unless given: a smoke run in seconds, figures not meaningful")
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(num_images=2, batch_size=2, rounds=1, teacher_steps=2, student_steps=[1, 2])
        args = parser.parse_args(argv)
    if args.timing_threads is None:
        from rewardkit.world.default_run import REPORT_TIMING_THREADS

        args.timing_threads = REPORT_TIMING_THREADS
    return args


def untrained_student(folder: Path) -> Path:
    """The shipped teacher saved as a student (guidance embedding added): a student's cost."""
    from rewardkit.backbones.stable_diffusion import StableDiffusionBackbone
    from rewardkit.world.assets import TEACHER, asset_path

    backbone = StableDiffusionBackbone(str(asset_path(TEACHER)))
    return backbone.save_pipeline(backbone.build_student(), folder)


def measure(args: argparse.Namespace, student: Path, output: Path) -> dict[str, Any]:
    """One evaluation as the default run makes it; the rows' two kinds of speed-up."""
    from rewardkit.world.assets import TEACHER, asset_path
    from rewardkit.world.evaluate import WorldEvaluator, add_speedups, model_spec

    evaluator = WorldEvaluator(num_images=args.num_images, seed=0)
    models = [model_spec(asset_path(TEACHER), "teacher", args.teacher_steps, "teacher"),
              model_spec(student, "student", tuple(args.student_steps), "student")]
    began = time.perf_counter()
    rows = evaluator.evaluate_models(models, batch_size=args.batch_size,
                                     timing_rounds=args.rounds, output_dir=output,
                                     timing_threads=args.timing_threads)
    seconds = time.perf_counter() - began
    add_speedups(rows)
    results = json.loads((output / "results.json").read_text())
    sampling = {(r["model"], r["steps"]): r["sampling_ms_per_image"] for r in results["rows"]}
    teacher_pass = sampling[("teacher", args.teacher_steps)]
    out = []
    for row in rows:
        out.append({
            "row": f"{row.name} {row.steps}", "ms_per_image": row.ms_per_image,
            "ms_per_image_min": row.ms_per_image_min, "ms_per_image_max": row.ms_per_image_max,
            "speedup": row.speedup, "speedup_min": row.speedup_min, "speedup_max": row.speedup_max,
            "sampling_pass_ms_per_image": sampling[(row.name, row.steps)],
            "sampling_pass_speedup": teacher_pass / sampling[(row.name, row.steps)],
            "judge_reward": row.judge_reward})
    return {"rows": out, "seconds": seconds}


def busy(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # a SIGTERM (a timeout) still runs the finally below, which stops the busy processes
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    import torch

    torch.set_num_threads(args.threads)
    conditions: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        student = args.student or untrained_student(Path(tmp) / "student")
        for name, extra in (("idle", 0), (f"loaded ({args.load} busy)", args.load)):
            spinners = busy(extra)
            try:
                before = loadavg()
                conditions[name] = measure(args, student, Path(tmp) / f"eval-{extra}")
                conditions[name]["loadavg_1min_before"] = before
                conditions[name]["loadavg_1min_after"] = loadavg()
            finally:
                for process in spinners:
                    process.kill()
                    process.wait()
    idle, loaded = conditions.values()
    lines = ["| row | condition | ms/image (rounds: median, min-max) | speed-up, interleaved | "
             "speed-up, sampling pass |", "|---|---|---:|---:|---:|"]
    for index, row in enumerate(idle["rows"]):
        for name, condition in conditions.items():
            r = condition["rows"][index]
            lines.append(f"| {row['row']} | {name} | {r['ms_per_image']:.1f} "
                         f"({r['ms_per_image_min']:.1f}-{r['ms_per_image_max']:.1f}) "
                         f"| {r['speedup']:.1f}x ({r['speedup_min']:.1f}-{r['speedup_max']:.1f}) "
                         f"| {r['sampling_pass_speedup']:.1f}x |")
    changes = {}
    for index, row in enumerate(idle["rows"][1:], start=1):
        for key in ("speedup", "sampling_pass_speedup"):
            a, b = idle["rows"][index][key], loaded["rows"][index][key]
            changes.setdefault(key, []).append(abs(b - a) / a)
    lines += ["", "relative change of the student rows' speed-up, loaded vs idle: interleaved "
              + ", ".join(f"{c:.0%}" for c in changes["speedup"])
              + f" (max {max(changes['speedup']):.0%}); sampling pass "
              + ", ".join(f"{c:.0%}" for c in changes["sampling_pass_speedup"])
              + f" (max {max(changes['sampling_pass_speedup']):.0%})"]
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
               f"torch {torch.__version__}, {args.threads} torch threads "
               f"(the timing rounds: {args.timing_threads})")
    lines += [f"machine: {machine}; 1-min load average before: idle "
              f"{idle['loadavg_1min_before']}, loaded {loaded['loadavg_1min_before']}; "
              f"{args.rounds} rounds of {min(args.batch_size, args.num_images)} images; "
              f"evaluation {idle['seconds']:.0f} s idle, {loaded['seconds']:.0f} s loaded",
              "command: python benchmarks/speedup_under_load.py "
              + " ".join(argv if argv is not None else sys.argv[1:])]
    print("\n".join(lines))
    if args.json is not None:
        args.json.write_text(json.dumps({
            "conditions": conditions, "machine": machine,
            "max_relative_change": {k: max(v) for k, v in changes.items()},
            "median_relative_change": {k: statistics.median(v) for k, v in changes.items()}},
            indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
