"""Which latent proxy RM reads the world best? The conv LRM, the latent CLIP, the UNet encoder.

Pretrains, with ``lrm-pretrain`` on the embedded world (the same ``world:train`` preference set
recipe, the same ``world-judge`` scores, the same 400 Bradley-Terry steps of 256 pairs), the
proxies below, and reports per proxy and seed: the held-out accuracy on the ``world:validation``
candidates (overall / generated-vs-generated / generated-vs-ground-truth, mean ± std over
seeds), its parameters (all / trained online), the parameter + gradient + AdamW-state memory of
the online update, and the cost of one online proxy update as rg-lcd's default world run makes
it (8 prompts x 3 candidates + 64 rehearsal pairs, forward + backward + AdamW step) and of
one student-side reward evaluation (32 latents, forward + backward to the latents):

==================  ==========================================================================
conv                proxy ``lrm`` (residual conv tower), preference stage only
conv + contrastive  proxy ``lrm``, 300 InfoNCE steps first: the paper's latent CLIP, then the
                    preference stage (what ``rewardkit world build`` ships as ``lrm``)
unet                proxy ``lrm-unet``: the teacher's encoder (copied), preference stage only
unet random init    proxy ``lrm-unet`` with ``init_from_teacher`` off: does the teacher's
                    encoder help, or only its architecture?
==================  ==========================================================================

With ``--online`` each pretrained proxy then starts the default world run (``rewardkit run
rg-lcd``, 600 steps) and its final held-out accuracy and the student's judge reward at 2 steps
are added. Runs are kept under ``--output`` and reused (``--retrain`` to train again).

    python benchmarks/lrm_towers.py                      # 4 proxies x 1 seed: ~25 min on 2 cores
    python benchmarks/lrm_towers.py --seeds 0 1 2 --only unet conv
    python benchmarks/lrm_towers.py --online --only unet # + a 600-step rg-lcd run per proxy
    python benchmarks/lrm_towers.py --quick              # smoke run: minutes, not evidence
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

#: (row, proxy, proxy_params changes, contrastive stage).
ROWS: tuple[tuple[str, str, dict[str, Any], bool], ...] = (
    ("conv", "lrm", {}, False),
    ("conv + contrastive", "lrm", {}, True),
    ("unet", "lrm-unet", {}, False),
    ("unet random init", "lrm-unet", {"init_from_teacher": False}, False),
)
HELDOUT = ("proxy_heldout_accuracy", "proxy_heldout_accuracy_generated_vs_generated",
           "proxy_heldout_accuracy_generated_vs_ground_truth")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--only", nargs="*", default=None, help="rows to run (names as above)")
    parser.add_argument("--online", action="store_true", help="also a 600-step rg-lcd run each")
    parser.add_argument("--quick", action="store_true", help="a smoke run (tiny stages)")
    parser.add_argument("--output", type=Path, default=Path("runs/lrm_towers"))
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def pretrain_config(proxy: str, changes: dict[str, Any], contrastive: bool, seed: int,
                    out: Path, quick: bool) -> dict[str, Any]:
    """The ``lrm-pretrain`` config of one row (the world's, as ``rewardkit world build`` uses)."""
    from rewardkit.world.assets import TEACHER, asset_path
    from rewardkit.world.build import PLANS
    from rewardkit.world.lrm import world_lrm_overrides

    plan = PLANS["tiny" if quick else "full"]
    config = world_lrm_overrides(
        asset_path(TEACHER), out, contrastive_steps=plan.lrm_contrastive_steps if contrastive else 0,
        preference_prompts=plan.lrm_preference_prompts, preference_steps=plan.lrm_preference_steps,
        eval_prompts=plan.lrm_eval_prompts, seed=seed, proxy=proxy)
    config["proxy_params"].update(changes)
    config["overwrite_output_dir"] = True  # only called to (re)train this row
    return config


def heldout_rows(run: Path) -> list[dict[str, float]]:
    from rewardkit.training.metrics import read_metrics

    return [r for r in read_metrics(run / "metrics.jsonl") if HELDOUT[0] in r]


def update_cost(lrm_dir: Path, preference_set: Path, device: str, repeats: int = 10) -> dict:
    """Seconds per online update and per student-side reward evaluation, and memory."""
    import torch

    from rewardkit.backbones.stable_diffusion import StableDiffusionBackbone
    from rewardkit.proxies import ProxyUpdater
    from rewardkit.proxies.factory import build_proxy
    from rewardkit.proxies.preference_set import PreferenceSet
    from rewardkit.proxies.rehearsal import Rehearsal
    from rewardkit.world.assets import TEACHER, asset_path

    name = json.loads((lrm_dir / "proxy_config.json").read_text())["name"]
    backbone = StableDiffusionBackbone(str(asset_path(TEACHER)), device=device)
    proxy = build_proxy(name, {}, backbone, pretrained=str(lrm_dir)).to(device)
    generator = torch.Generator().manual_seed(0)
    updater = ProxyUpdater(proxy, lr=1e-4, loss_type="cross_entropy",
                           rehearsal=Rehearsal(PreferenceSet.load(preference_set), batch_size=64),
                           generator=generator)
    embeds = backbone.encode_prompts(["a red circle on a blue background"] * 8).prompt_embeds.detach()
    latents = torch.randn(3, 8, backbone.latent_channels, 8, 8, generator=generator).to(device)
    expert = torch.rand(3, 8, generator=generator)

    def timed(fn) -> float:
        for _ in range(2):
            fn()
        times = []
        for _ in range(repeats):
            began = time.perf_counter()
            fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - began)
        return statistics.median(times)

    student = torch.randn(32, backbone.latent_channels, 8, 8, requires_grad=True, device=device)
    student_embeds = embeds.repeat(4, 1, 1).to(device)

    def reward_backward() -> None:
        proxy(student, student_embeds).sum().backward()

    trained = sum(p.numel() for p in proxy.trainable_parameters())
    total = sum(p.numel() for p in proxy.parameters())
    return {"update_s": timed(lambda: updater.step(latents, embeds.to(device), expert)),
            "reward_s": timed(reward_backward), "parameters": total, "trained": trained,
            # weights (fp32) + gradients and two AdamW moments of the trained ones
            "update_memory_mb": (4 * total + 12 * trained) / 2 ** 20}


def online_run(name: str, lrm_dir: Path, preference_set: Path, seed: int, args) -> dict:
    """The default world run started from this proxy; its final held-out and judge reward."""
    import rewardkit as rk
    from rewardkit.world.default_run import default_rg_lcd_overrides
    from rewardkit.world.evaluate import WorldEvaluator

    proxy = json.loads((lrm_dir / "proxy_config.json").read_text())["name"]
    out = args.output / f"seed-{seed}" / name.replace(" ", "-") / "online"
    overrides = default_rg_lcd_overrides(None, str(out), 20 if args.quick else 600)
    overrides.update(proxy=proxy, pretrained_proxy=str(lrm_dir), seed=seed,
                     proxy_rehearsal_set=str(preference_set), checkpointing_steps=0,
                     proxy_params={"trainable": "all"}, overwrite_output_dir=True)
    overrides["validation_steps"] = overrides["max_train_steps"]
    overrides["validation_prompts"] = overrides["validation_prompts"][:1]
    if not (out / "pipeline").is_dir() or args.retrain:
        print(f"\n=== online rg-lcd from {name} seed {seed}", flush=True)
        rk.recipe("rg-lcd", overrides).run(progress=True)
    evaluator = WorldEvaluator(num_images=16 if args.quick else 128, seed=0, device=args.device)
    row = evaluator.evaluate(out / "pipeline", "student", 2, name=name, batch_size=16)[0]
    final = heldout_rows(out)[-1]
    return {"online_heldout": final[HELDOUT[0]], "online_heldout_gt": final[HELDOUT[2]],
            "judge_at_2": row.judge_reward, "fd_at_2": row.frechet_distance}


def main(argv: list[str] | None = None) -> int:
    from lrm_evidence import fmt, write_results

    import rewardkit as rk
    from rewardkit.proxies.factory import PROXY_DIR
    from rewardkit.recipes.lrm_pretrain import PREFERENCE_SET_DIR

    args = parse_args(argv)
    began = time.perf_counter()
    results: dict[str, list[dict[str, Any]]] = {}
    for name, proxy, changes, contrastive in ROWS:
        if args.only is not None and name not in args.only:
            continue
        for seed in args.seeds:
            run = args.output / f"seed-{seed}" / name.replace(" ", "-")
            if args.retrain or not (run / PROXY_DIR).is_dir():
                print(f"\n=== lrm-pretrain {name} seed {seed}", flush=True)
                started = time.perf_counter()
                rk.recipe("lrm-pretrain", pretrain_config(proxy, changes, contrastive, seed, run,
                                                          args.quick)).run(progress=True)
                print(f"    {time.perf_counter() - started:.0f} s", flush=True)
            rows = heldout_rows(run)
            record: dict[str, Any] = {"seed": seed, "before": rows[0][HELDOUT[0]],
                                      **{key: rows[-1][key] for key in HELDOUT}}
            record.update(update_cost(run / PROXY_DIR, run / PREFERENCE_SET_DIR, args.device))
            if args.online:
                record.update(online_run(name, run / PROXY_DIR, run / PREFERENCE_SET_DIR,
                                         seed, args))
            results.setdefault(name, []).append(record)

    columns = ["held-out before", "held-out after (all / gen-gen / gen-gt)", "parameters (trained)",
               "update memory MB", "s / proxy update", "s / reward backward"]
    if args.online:
        columns += ["online held-out (all / gen-gt)", "judge @2"]
    lines = ["| proxy | seeds | " + " | ".join(columns) + " |",
             "|---|---:|" + "---:|" * len(columns)]
    for name, records in results.items():
        col = {k: [r[k] for r in records] for k in records[0]}
        cells = [fmt(col["before"]),
                 " / ".join(fmt(col[k]) for k in HELDOUT),
                 f"{col['parameters'][0] / 1e6:.2f} M ({col['trained'][0] / 1e6:.2f} M)",
                 f"{col['update_memory_mb'][0]:.1f}",
                 fmt(col["update_s"], 4), fmt(col["reward_s"], 4)]
        if args.online:
            cells += [f"{fmt(col['online_heldout'])} / {fmt(col['online_heldout_gt'])}",
                      fmt(col["judge_at_2"])]
        lines.append(f"| {name} | {len(records)} | " + " | ".join(cells) + " |")
    command = "python benchmarks/lrm_towers.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    lines += ["", f"command: `{command.strip()}`; mean ± std over seeds; timings are medians of "
              f"10 calls on {args.device}; {(time.perf_counter() - began) / 60:.1f} min"]
    write_results(args.output, lines, results, "results.json")
    return 0 if all(math.isfinite(r[HELDOUT[0]]) for rs in results.values() for r in rs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
