"""The whole human-evaluation flow on the embedded world, with synthetic raters.

    python benchmarks/vote_world.py                    # 64 test prompts, 3 raters; ~9 min on 2 cores
    python benchmarks/vote_world.py --student rg-lcd-world/pipeline
    python benchmarks/vote_world.py --quick --student PATH   # a smoke run: seconds, not evidence

The paper's headline as a study: the world's distilled student at 2 steps (``lcd-world/pipeline``,
which ``rewardkit run draft`` distils on first use and this script too when it is missing)
against the shipped teacher at 50. Every step is a ``rewardkit vote`` command, printed as it
runs:

1. ``rewardkit vote STUDENT TEACHER --steps 2,50 --prompts world --limit N --prepare-only``:
   both models sampled ahead, fixed seeds;
2. ``rewardkit vote simulate --reward world-judge --raters R``: synthetic Bradley-Terry raters
   who judge with the world's rule-based judge (``--temperature``, 0.05 here: raters who agree
   with each other about 70% of the time on these pairs) answer every pair through the page's
   session;
3. ``rewardkit vote report --metrics world-judge,world-scorer``: the win rate with its
   interval, rater agreement, and each RM's agreement with the raters (the judge's is high by
   construction: the raters use it; ``world-scorer``'s is the real question);
4. ``rewardkit vote export`` of the first half of the pairs, ``lrm-pretrain --preference_set``
   on it, fine-tuning the shipped world LRM (pretrained on the judge's preferences over other
   images), and the accuracy on the second half's export of the shipped LRM and the tuned one.

Prints (and with ``--json`` writes) the figures and each step's wall time.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", type=Path, default=None,
                        help="a world student pipeline (default: lcd-world/pipeline, distilled "
                             "if missing)")
    parser.add_argument("--output", type=Path, default=Path("runs/vote_world"))
    parser.add_argument("--prompts", type=int, default=None, help="world test prompts (64)")
    parser.add_argument("--raters", type=int, default=None, help="simulated raters (3)")
    parser.add_argument("--teacher-steps", type=int, default=50)
    parser.add_argument("--temperature", type=float, default=0.05,
                        help="the simulated raters' Bradley-Terry temperature")
    parser.add_argument("--lrm-steps", type=int, default=None, help="lrm-pretrain steps (100)")
    parser.add_argument("--quick", action="store_true", help="8 prompts, 2 raters, 5 LRM steps")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    args.prompts = args.prompts or (8 if args.quick else 64)
    args.raters = args.raters or (2 if args.quick else 3)
    args.lrm_steps = args.lrm_steps or (5 if args.quick else 100)
    return args


def command(args: list[str], timings: dict[str, float], name: str) -> None:
    """Run ``rewardkit ARGS`` in this process, timed; stop on failure."""
    from rewardkit import cli

    print("$ rewardkit " + " ".join(shlex.quote(a) for a in args), flush=True)
    began = time.perf_counter()
    code = cli.run(args)
    timings[name] = round(time.perf_counter() - began, 1)
    if code != 0:
        raise SystemExit(f"rewardkit {args[0]} {args[1]} failed ({code})")


def split_votes(votes: Path, pairs: int) -> tuple[Path, Path]:
    """The votes on the first half of the pairs and on the second, as two files."""
    from rewardkit.vote.log import VoteLog

    read = VoteLog(votes).read().votes
    halves = (votes.with_name("first-half.jsonl"), votes.with_name("second-half.jsonl"))
    for path, keep in zip(halves, (lambda v: v["pair"] < pairs // 2,
                                   lambda v: v["pair"] >= pairs // 2)):
        path.unlink(missing_ok=True)
        VoteLog(path).append([v for v in read if keep(v)])
    return halves


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    from rewardkit.proxies.lrm import LatentRewardModel
    from rewardkit.proxies.preference_set import PreferenceSet, preference_accuracy
    from rewardkit.world.assets import LRM, TEACHER, asset_path

    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    student = args.student
    if student is None:
        from rewardkit.world.tuning_run import world_student

        began = time.perf_counter()
        student = world_student()
        timings["student"] = round(time.perf_counter() - began, 1)
    votes = out / "votes.jsonl"
    votes.unlink(missing_ok=True)  # a fresh set of synthetic votes each time
    teacher = str(asset_path(TEACHER))
    command(["vote", str(student), teacher, "--steps", f"2,{args.teacher_steps}", "--prompts",
             "world", "--limit", str(args.prompts), "-o", str(votes), "--prepare-only",
             "--device", "cpu"], timings, "sample")
    command(["vote", "simulate", str(votes), "--reward", "world-judge", "--raters",
             str(args.raters), "--temperature", str(args.temperature)], timings, "simulate")
    command(["vote", "report", str(votes), "--metrics", "world-judge,world-scorer", "-o",
             str(out / "report.md")], timings, "report")
    from rewardkit.vote.report import report

    _, results = report(votes, ["world-judge", "world-scorer"])  # the same figures, as a dict
    first, second = split_votes(votes, args.prompts)
    for half in (first, second):
        command(["vote", "export", str(half), "--teacher", teacher, "-o",
                 str(out / f"{half.stem}-set")], timings, f"export {half.stem}")
    import rewardkit as rk

    began = time.perf_counter()
    rk.recipe("lrm-pretrain", {
        "pretrained_teacher_model": teacher, "output_dir": str(out / "lrm"),
        "overwrite_output_dir": True, "train_shards_path_or_url": "world:train",
        "resolution": 32, "contrastive_steps": 0, "preference_set": str(out / "first-half-set"),
        "pretrained_proxy": str(asset_path(LRM)), "preference_steps": args.lrm_steps,
        "preference_batch_size": 32, "preference_learning_rate": 1e-4, "lr_warmup_steps": 0,
        "validation_steps": 0, "checkpointing_steps": 0, "report_to": "none"}).run(progress=False)
    timings["lrm-pretrain"] = round(time.perf_counter() - began, 1)
    heldout = PreferenceSet.load(out / "second-half-set")
    trained = LatentRewardModel.from_pretrained(str(out / "lrm" / "proxy"))
    shipped = LatentRewardModel.from_pretrained(str(asset_path(LRM)))
    study = results["studies"][0]
    overall = study["criteria"]["overall"]
    figures = {
        "study": f"{study['model_a']} vs {study['model_b']}", "prompts": args.prompts,
        "raters": args.raters, "votes": overall["win_rate"]["votes"],
        "win_rate_of_student": overall["win_rate"],
        "rater_agreement": overall["agreement"],
        "rm_agreement": overall["reward_models"],
        "lrm_from_votes": {
            "train_pairs": PreferenceSet.load(out / "first-half-set").num_prompts,
            "heldout_pairs": heldout.num_prompts,
            "shipped_lrm_heldout_accuracy": preference_accuracy(shipped, heldout)[
                "proxy_heldout_accuracy"],
            "tuned_lrm_heldout_accuracy": preference_accuracy(trained, heldout)[
                "proxy_heldout_accuracy"]},
        "seconds": timings,
        "student": str(student),
    }
    print(json.dumps(figures, indent=1))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return figures


if __name__ == "__main__":
    main()
