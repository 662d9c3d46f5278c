"""The flow world: a flow-matching teacher against its distilled few-step students, 3 seeds.

The teacher is the world's flow-matching MMDiT in SD3 format (``rewardkit world build --teacher
flow``: ``rewardkit/world/assets/teacher-flow``, built here first when it is missing, ~45 min on 2
cores). For each seed two students are distilled from it through the ``stable-diffusion-3``
backbone on ``world:train``, with the guidance baked in (``w_min = w_max = 6.5``: the teacher's
CFG 7.5):

=================  =========================================================================
lcd                plain latent consistency distillation of the flow teacher
rg-lcd lrm         RG-LCD through an LRM that learns ``world-judge`` online (from scratch: the
                   shipped world LRM reads the UNet teacher's prompt embeddings, not SD3's)
=================  =========================================================================

Then, on the same held-out test prompts and sampling seeds, the teacher at 50 Euler steps with
classifier-free guidance 7.5 and each student at 1, 2 and 4 steps (no guidance: it is baked in),
all sampled in this process through the backbone (:mod:`rewardkit.world.flow_eval`): the judge
reward, the Frechet distance to real renders (``world-fd``), ms/image and the speed-up over the
teacher (timed on this machine in rounds that sample every row in turn: medians), and the LRM's
held-out pairwise accuracy (``world:validation`` candidates judged once, before and after
training). Mean ± std over the seeds. The students sample with their saved pipeline's default
schedule, whose last level is diffusers' smallest (``s = 0.001``), so 2 steps are close to 1.

    python benchmarks/flow_world.py                    # 3 seeds, 400 steps each
    python benchmarks/flow_world.py --quick            # smoke run: a tiny teacher, seconds

Runs are kept under ``--output`` (``runs/flow_world``); a rerun reuses the finished ones whose
settings are the same (``--retrain`` to distil again), so an interrupted benchmark continues where
it stopped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

STUDENT_STEPS = (1, 2, 4)
ROWS = ("lcd", "rg-lcd lrm")
GUIDANCE_SCALE = 7.5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--teacher", type=Path, default=None,
                        help="a world flow teacher folder (default: the shipped teacher-flow, "
                             "built first if missing)")
    parser.add_argument("--steps", type=int, default=None, help="distillation steps (400)")
    parser.add_argument("--teacher-steps", type=int, default=None, help="Euler steps (50)")
    parser.add_argument("--num-images", type=int, default=None, help="test prompts (64)")
    parser.add_argument("--heldout-prompts", type=int, default=None,
                        help="prompts of the LRM's held-out preference set (64)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--timing-rounds", type=int, default=None,
                        help="rounds that time every row's sampling in turn (3)")
    parser.add_argument("--output", type=Path, default=Path("runs/flow_world"))
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: a tiny flow teacher, 2 steps, 4 prompts")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--retrain", action="store_true",
                        help="distil again where --output already holds a finished run")
    args = parser.parse_args(argv)
    args.steps = args.steps or (2 if args.quick else 400)
    args.teacher_steps = args.teacher_steps or (4 if args.quick else 50)
    args.num_images = args.num_images or (4 if args.quick else 64)
    args.heldout_prompts = args.heldout_prompts or (4 if args.quick else 64)
    args.timing_rounds = args.timing_rounds or (1 if args.quick else 3)
    return args


def flow_teacher(args: argparse.Namespace) -> Path:
    """The teacher folder: given, the shipped one, or built now (tiny with ``--quick``)."""
    from rewardkit.world.assets import ASSETS
    from rewardkit.world.flow_build import FLOW_TEACHER, build_flow_world

    if args.teacher is not None:
        return args.teacher
    root = args.output / "world" if args.quick else ASSETS
    if not (root / FLOW_TEACHER / "model_index.json").is_file():
        print(f"no flow teacher in {root}: building it (rewardkit world build --teacher flow"
              f"{' --size tiny' if args.quick else ''})", flush=True)
        build_flow_world(root, size="tiny" if args.quick else "full", progress=not args.quick)
    return root / FLOW_TEACHER


def run_values(row: str, teacher: Path, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """The config of one (row, seed) distillation: the world's rg-lcd settings on the flow
    teacher, the guidance baked in, no reward-hacking guard (the table compares the
    distillations alone)."""
    from rewardkit.world.default_run import SCRATCH_LRM_SCHEDULE
    from rewardkit.world.flow_teacher import BACKBONE, BACKBONE_PARAMS
    from rewardkit.world.lrm import proxy_params_for_world

    values: dict[str, Any] = {
        "pretrained_teacher_model": str(teacher), "backbone": BACKBONE,
        "backbone_params": dict(BACKBONE_PARAMS), "train_shards_path_or_url": "world:train",
        "output_dir": str(args.output / row.replace(" ", "-") / f"seed-{seed}"),
        "overwrite_output_dir": True, "resolution": 32,
        "train_batch_size": 4 if args.quick else 32, "max_train_steps": args.steps,
        "learning_rate": 1e-4, "lr_scheduler": "constant_with_warmup",
        "lr_warmup_steps": 0 if args.quick else 20, "unet_time_cond_proj_dim": None,
        "w_min": GUIDANCE_SCALE - 1, "w_max": GUIDANCE_SCALE - 1,
        "validation_steps": 0, "checkpointing_steps": 0, "report_to": "none", "seed": seed,
    }
    if row == "rg-lcd lrm":
        values.update({
            "reward": "world-judge", "proxy": "lrm", "proxy_params": proxy_params_for_world("lrm"),
            "reward_scale": 1.0, "proxy_batch_size": 4 if args.quick else 8,
            "proxy_eval_shards_path_or_url": "world:validation",
            "proxy_eval_num_prompts": args.heldout_prompts, **SCRATCH_LRM_SCHEDULE})
    return values


#: What a finished run leaves in its folder for a rerun to reuse.
RUN_FILE = "flow_world.json"


def distil(row: str, teacher: Path, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train one student (or reuse the finished run in its folder, unless ``--retrain``); its
    folder, minutes and (rg-lcd) the LRM's held-out accuracy."""
    import rewardkit as rk
    from rewardkit.proxies.preference_set import preference_accuracy

    values = run_values(row, teacher, seed, args)
    finished = Path(values["output_dir"]) / RUN_FILE
    if finished.is_file() and not args.retrain:
        done = json.loads(finished.read_text())
        if done.get("settings") == values:
            print(f"reusing {finished.parent} (--retrain to distil again)", flush=True)
            return done
        print(f"{finished.parent} was distilled with other settings: distilling again",
              flush=True)
    recipe = rk.recipe("lcd" if row == "lcd" else "rg-lcd", values)
    began = time.perf_counter()
    output = recipe.run(progress=False)
    result: dict[str, Any] = {"pipeline": str(Path(output) / "pipeline"),
                              "train_minutes": round((time.perf_counter() - began) / 60, 2),
                              "settings": values}
    if row == "rg-lcd lrm":
        metrics = (Path(output) / "metrics.jsonl").read_text().splitlines()
        rows = [json.loads(line) for line in metrics]
        before = next((r["proxy_heldout_accuracy"] for r in rows
                       if "proxy_heldout_accuracy" in r), None)
        result["lrm_heldout_accuracy_before"] = before
        result["lrm_heldout_accuracy"] = preference_accuracy(
            recipe.proxy_model, recipe.heldout)["proxy_heldout_accuracy"]
    finished.write_text(json.dumps(result, indent=2))
    return result


def run_seed(seed: int, teacher: Path, args: argparse.Namespace, evaluator: Any) -> list[dict]:
    """The teacher's row and every student's rows of one seed. Sampling is timed in
    ``--timing-rounds`` rounds that sample every row in turn (the images, hence the quality
    figures, are the first round's): ms/image is the median over the rounds and the speed-up the
    median of the per-round ratios to the teacher, so load on a shared machine slows both sides
    of a ratio alike."""
    from rewardkit.world.flow_eval import flow_backbone, student_images, teacher_images

    backbone = flow_backbone(teacher)
    prompts = evaluator.prompts
    trained = {row: distil(row, teacher, seed, args) for row in ROWS}
    students = {row: backbone.load_student(done["pipeline"]).eval()
                for row, done in trained.items()}
    samplers = [("teacher", args.teacher_steps,
                 lambda: teacher_images(backbone, prompts, steps=args.teacher_steps,
                                        guidance_scale=GUIDANCE_SCALE, seed=seed,
                                        batch_size=args.batch_size))]
    samplers += [(row, steps, lambda row=row, steps=steps: student_images(
        backbone, students[row], prompts, steps=steps, seed=seed, batch_size=args.batch_size))
        for row in ROWS for steps in STUDENT_STEPS]
    images: list[Any] = [None] * len(samplers)
    times: list[list[float]] = [[] for _ in samplers]
    for _ in range(args.timing_rounds):
        for index, (_, _, sample) in enumerate(samplers):
            drawn, seconds = sample()
            images[index] = drawn if images[index] is None else images[index]
            times[index].append(1000.0 * seconds / len(prompts))
    rows = []
    for index, (label, steps, _) in enumerate(samplers):
        scored = evaluator.score(images[index])
        ratios = [t / own for t, own in zip(times[0], times[index])]
        extra = {k: v for k, v in trained.get(label, {}).items()
                 if k not in ("pipeline", "settings")}
        rows.append({"model": label, "steps": steps, "seed": seed,
                     "judge_reward": scored["judge_reward"],
                     "frechet_distance": scored["frechet_distance"],
                     "ms_per_image": statistics.median(times[index]),
                     "speedup": statistics.median(ratios), **extra})
    return rows


def _spread(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean = statistics.fmean(values)
    return f"{mean:.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{mean:.3f}"


def table(rows: list[dict]) -> str:
    """Mean ± std over seeds per (model, steps), as markdown."""
    keys = sorted({(r["model"], r["steps"]) for r in rows},
                  key=lambda k: (k[0] != "teacher", k[0], k[1]))
    lines = ["| model | steps | judge reward | Frechet distance | ms/image | speed-up | "
             "LRM held-out accuracy (before -> after) |", "|---|---|---|---|---|---|---|"]
    for model, steps in keys:
        group = [r for r in rows if (r["model"], r["steps"]) == (model, steps)]
        accuracy = "-"
        if "lrm_heldout_accuracy" in group[0]:
            accuracy = (f"{_spread([r['lrm_heldout_accuracy_before'] for r in group])} -> "
                        f"{_spread([r['lrm_heldout_accuracy'] for r in group])}")
        lines.append(f"| {model} | {steps} | {_spread([r['judge_reward'] for r in group])} | "
                     f"{_spread([r['frechet_distance'] for r in group])} | "
                     f"{_spread([r['ms_per_image'] for r in group])} | "
                     f"{_spread([r['speedup'] for r in group])} | {accuracy} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import torch

    from rewardkit.world.evaluate import WorldEvaluator

    args = parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    teacher = flow_teacher(args)  # a teacher built here trains on all the threads
    torch.set_num_threads(1)  # distillation and timing: one thread, as the default run times
    evaluator = WorldEvaluator(num_images=args.num_images)
    rows = [row for seed in args.seeds for row in run_seed(seed, teacher, args, evaluator)]
    text = table(rows)
    print(text, flush=True)
    command = "python benchmarks/flow_world.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result = {"command": command.strip(), "teacher": str(teacher), "seeds": args.seeds,
              "distillation_steps": args.steps, "teacher_steps": args.teacher_steps,
              "guidance_scale": GUIDANCE_SCALE, "num_images": args.num_images, "rows": rows,
              "table": text}
    (args.output / "table.md").write_text(text + "\n")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
