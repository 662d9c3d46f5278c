"""Benchmark LCD vs RG-LCD direct vs RG-LCD with the latent proxy RM (LRM): step time, memory.

All three run the same tiny Stable-Diffusion-architecture teacher, data and batch, built offline:

- ``lcd``: the plain ``lcd`` recipe;
- ``direct``: ``rg-lcd`` with ``proxy=none``: decode ``f_theta`` and back-propagate a
  differentiable expert RM (``clip-score`` on a tiny offline CLIP) into the student;
- ``lrm``: ``rg-lcd`` with ``proxy=lrm`` (default-sized LRM): the student maximises the LRM in
  latent space; after each step the expert scores 3 x ``proxy_batch_size`` decoded candidates
  without gradients and the LRM takes one optimiser step.

Each mode runs in a fresh subprocess, so peak memory is per mode: CUDA ``max_memory_allocated``,
or on CPU the growth of the process's peak resident set size over its size after setup
(``peak_rss_growth``) plus the absolute peak. Step times come from one more process that builds
all three recipes and steps them round-robin (medians), so a shared machine's drifting load hits
every mode alike. The data loader is bypassed (one repeated batch).

Usage::

    python benchmarks/bench_rg_lcd.py                          # CPU or the visible GPU
    python benchmarks/bench_rg_lcd.py --latent-size 32 --batch 8 --steps 10 --json out.json
    python benchmarks/bench_rg_lcd.py --proxy-params '{"image_widths": [32, 64], "text_width": 64}'

Compare ratios, measured on one machine in one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODES = ("lcd", "direct", "lrm")


def current_rss_mib() -> float:
    """The process's resident set size now (Linux /proc; 0 elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if platform.system() != "Darwin" else rss / 2**20


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_assets(root: Path, args: argparse.Namespace) -> dict[str, str]:
    from rewardkit.testing.tiny_clip import build_tiny_clip
    from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline
    from rewardkit.testing.tiny_training import write_tiny_image_folder

    channels = tuple(int(c) for c in args.channels.split(","))
    teacher = build_tiny_sd_pipeline(root / "teacher", sample_size=args.latent_size,
                                     unet_block_out_channels=channels, cross_attention_dim=64,
                                     text_intermediate_size=128)
    image_size = args.latent_size * 2  # the tiny VAE downsamples 2x
    data = write_tiny_image_folder(root / "data", count=32, size=image_size)
    clip = build_tiny_clip(root / "clip", image_size=32)
    return {"teacher": str(teacher), "data": str(data), "clip": str(clip)}


def build_recipe(mode: str, assets: dict[str, str], out: Path, args: argparse.Namespace):
    from rewardkit.recipes.lcd import LCDRecipe
    from rewardkit.recipes.rg_lcd import RGLCDConfig, RGLCDRecipe
    from rewardkit.testing.tiny_training import tiny_lcd_config

    base = tiny_lcd_config(
        assets["teacher"], assets["data"], out, resolution=args.latent_size * 2,
        train_batch_size=args.batch, max_train_steps=args.warmup + args.steps,
        unet_time_cond_proj_dim=256, mixed_precision=args.mixed_precision)
    if mode == "lcd":
        return LCDRecipe(base)
    config = RGLCDConfig(**{
        **dataclasses.asdict(base), "reward": "clip-score",
        "reward_params": {"model": assets["clip"], "device": args.device},
        "proxy": "none" if mode == "direct" else "lrm",
        "proxy_params": json.loads(args.proxy_params) if mode == "lrm" else {},
        "proxy_batch_size": args.proxy_batch_size, "vae_decode_batch_size": args.vae_decode_batch_size})
    return RGLCDRecipe(config)


def worker(mode: str, assets: dict[str, str], out: Path, args: argparse.Namespace) -> dict:
    """Time ``args.steps`` steps of one mode in this (fresh) process."""
    recipe = build_recipe(mode, assets, out, args)
    recipe.setup()
    device = recipe.accelerator.device
    recipe.batches = itertools.repeat(next(recipe.batches))
    rss_after_setup = current_rss_mib()
    update_times: list[float] = []
    after = recipe.after_step

    def timed_after():  # the EMA and (LRM mode) the proxy update happen here
        synchronize(device)
        started = time.perf_counter()
        out = after()
        synchronize(device)
        update_times.append(time.perf_counter() - started)
        return out

    recipe.after_step = timed_after
    for _ in range(args.warmup):
        recipe.train_step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, metrics = [], {}
    for _ in range(args.steps):
        synchronize(device)
        started = time.perf_counter()
        metrics = recipe.train_step()
        synchronize(device)
        times.append(time.perf_counter() - started)
    result = {"mode": mode, "device": str(device), "s_per_step": statistics.median(times),
              "s_per_step_mean": statistics.mean(times),
              "s_after_step": statistics.median(update_times[-args.steps:]),
              "unet_params": sum(p.numel() for p in recipe.backbone.unet.parameters()),
              "last_metrics": metrics}
    if device.type == "cuda":
        result["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        result["peak_memory_mib"] = peak_rss_mib() - rss_after_setup  # growth over setup
        result["peak_rss_mib"] = peak_rss_mib()
    proxy = getattr(recipe, "proxy_model", None)
    if proxy is not None:
        result["lrm_params"] = sum(p.numel() for p in proxy.parameters())
    return result


def interleaved_times(assets: dict[str, str], root: Path, args: argparse.Namespace) -> dict:
    """Median step time of every mode, all built in one process and stepped round-robin.

    A shared machine's load drifts; alternating the modes step by step exposes all of them to
    the same drift, so their ratios are steadier than those of separate runs.
    """
    recipes = {}
    for mode in MODES:
        recipe = build_recipe(mode, assets, root / f"interleaved-{mode}", args)
        recipe.setup()
        recipe.batches = itertools.repeat(next(recipe.batches))
        for _ in range(args.warmup):
            recipe.train_step()
        recipes[mode] = recipe
    device = recipes["lcd"].accelerator.device
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(args.steps):
        for mode, recipe in recipes.items():
            synchronize(device)
            started = time.perf_counter()
            recipe.train_step()
            synchronize(device)
            times[mode].append(time.perf_counter() - started)
    return {mode: statistics.median(values) for mode, values in times.items()}


def run_mode(mode: str, assets_file: Path, root: Path, argv: list[str]) -> dict:
    command = [sys.executable, __file__, *argv, "--worker", mode, "--assets", str(assets_file),
               "--out", str(root / f"out-{mode}")]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latent-size", type=int, default=16)
    parser.add_argument("--channels", type=str, default="32,64")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--proxy-batch-size", type=int, default=8)
    parser.add_argument("--vae-decode-batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--proxy-params", default="{}",
                        help='LRM settings as JSON, e.g. \'{"image_widths": [32, 64]}\'')
    parser.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="device of the expert RM (the recipe uses accelerate's device)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--worker", choices=MODES + ("interleaved",), help=argparse.SUPPRESS)
    parser.add_argument("--assets", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.worker:
        assets = json.loads(args.assets.read_text())
        if args.worker == "interleaved":
            print(json.dumps(interleaved_times(assets, args.out, args)))
        else:
            print(json.dumps(worker(args.worker, assets, args.out, args)))
        return

    argv = [a for a in sys.argv[1:]]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        assets_file = root / "assets.json"
        assets_file.write_text(json.dumps(build_assets(root, args)))
        results = {mode: run_mode(mode, assets_file, root, argv) for mode in MODES}
        interleaved = run_mode("interleaved", assets_file, root, argv)
    for mode in MODES:
        results[mode]["s_per_step_interleaved"] = interleaved[mode]

    base = results["lcd"]
    memory = "peak memory (MiB)" if base["device"].startswith("cuda") else \
        "peak RSS growth (MiB)"
    print(f"device {base['device']}  threads {torch.get_num_threads()}  latents "
          f"{args.latent_size}x{args.latent_size}  batch {args.batch}  proxy_batch_size "
          f"{args.proxy_batch_size}  mixed_precision {args.mixed_precision}  "
          f"teacher UNet {base['unet_params'] / 1e6:.2f}M params  "
          f"LRM {results['lrm'].get('lrm_params', 0) / 1e6:.2f}M params")
    print(f"{'mode':8s} {'ms/step*':>10s} {'time ratio':>11s} {memory:>22s} {'memory ratio':>13s} {'of which after-step ms':>23s}")
    for mode in MODES:
        r = results[mode]
        step, base_step = r["s_per_step_interleaved"], base["s_per_step_interleaved"]
        print(f"{mode:8s} {step * 1e3:10.1f} {step / base_step:10.2f}x"
              f" {r['peak_memory_mib']:22.1f} "
              f"{r['peak_memory_mib'] / max(base['peak_memory_mib'], 1e-9):12.2f}x"
              f" {r['s_after_step'] * 1e3:23.1f}")
    print("* median over steps, the three modes stepped round-robin in one process; after-step ="
          " the LRM update in lrm mode (decode, expert, step), timed in its own process")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "results": results}, indent=2, default=str))


if __name__ == "__main__":
    main()
