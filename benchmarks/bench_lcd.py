"""Benchmark the LCD training step and the teacher's batched guidance call.

Measures, for a fixed small Stable-Diffusion-architecture teacher built offline:

1. training steps of the ``lcd`` recipe: seconds per step, images per second, peak memory
   (CUDA: ``max_memory_allocated``; CPU: the process's peak resident set size);
2. the teacher's conditional + unconditional pass as ONE batched call on ``[z; z]`` against
   two calls of batch B (inside the solver step, under ``no_grad``), printing the ratio.

Usage::

    python benchmarks/bench_lcd.py                       # CPU or the visible GPU
    python benchmarks/bench_lcd.py --latent-size 32 --batch 8 --steps 10 --json out.json

Numbers depend on the machine; compare ratios, and rerun the baseline on the same machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far in MiB (CUDA allocator peak, else the process's peak RSS)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if platform.system() != "Darwin" else rss / 2**20


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_assets(root: Path, latent_size: int, channels: tuple[int, ...]) -> tuple[Path, Path]:
    from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline
    from rewardkit.testing.tiny_training import write_tiny_image_folder

    teacher = build_tiny_sd_pipeline(root / "teacher", sample_size=latent_size,
                                     unet_block_out_channels=channels,
                                     cross_attention_dim=64, text_intermediate_size=128)
    image_size = latent_size * 2  # the tiny VAE has two blocks: one 2x downsampling
    data = write_tiny_image_folder(root / "data", count=32, size=image_size)
    return teacher, data


def bench_training(teacher: Path, data: Path, out: Path, args: argparse.Namespace) -> dict:
    from rewardkit.recipes.lcd import LCDRecipe
    from rewardkit.testing.tiny_training import tiny_lcd_config

    recipe = LCDRecipe(tiny_lcd_config(
        teacher, data, out, resolution=args.latent_size * 2, train_batch_size=args.batch,
        max_train_steps=args.warmup + args.steps, unet_time_cond_proj_dim=256,
        mixed_precision=args.mixed_precision, gradient_checkpointing=args.gradient_checkpointing))
    recipe.setup()
    device = recipe.accelerator.device
    batch = next(recipe.batches)
    recipe.batches = itertools.repeat(batch)  # time the step, not the data loader
    for _ in range(args.warmup):
        recipe.train_step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(args.steps):
        recipe.train_step()
    synchronize(device)
    elapsed = time.perf_counter() - started
    return {"device": str(device), "s_per_step": elapsed / args.steps,
            "images_per_s": args.batch * args.steps / elapsed,
            "peak_memory_mib": peak_memory_mb(device), "recipe": recipe}


def bench_teacher_call(recipe, args: argparse.Namespace) -> dict:
    """One guided solver step with the teacher batched ([z; z], 2B) vs two calls of B."""
    from rewardkit.solvers.guidance import teacher_denoiser

    backbone, solver = recipe.backbone, recipe.solver
    device = recipe.accelerator.device
    generator = torch.Generator().manual_seed(0)
    size = args.latent_size
    z = torch.randn(args.batch, backbone.latent_channels, size, size, generator=generator).to(device)
    index = solver.sample_indices(args.batch, generator=generator).to(device)
    embeds = backbone.encode_prompts(["a photo of a red circle"] * args.batch)
    uncond = backbone.empty_conditioning(args.batch)
    w = torch.full((args.batch,), 7.0, device=device)

    def unet_fn(x, t, e):
        return backbone.predict(backbone.unet, x, t, e)

    timings, outputs = {}, {}
    for batched in (True, False):
        denoise = teacher_denoiser(unet_fn, embeds, uncond, backbone.schedule, w, batched=batched)
        with torch.no_grad():
            for _ in range(args.warmup):
                solver.step(denoise, z, index)
            synchronize(device)
            started = time.perf_counter()
            for _ in range(args.repeats):
                outputs[batched] = solver.step(denoise, z, index)
            synchronize(device)
        timings[batched] = (time.perf_counter() - started) / args.repeats
    max_diff = (outputs[True] - outputs[False]).abs().max().item()
    return {"batched_s": timings[True], "two_calls_s": timings[False],
            "two_calls_over_batched": timings[False] / timings[True],
            "max_abs_difference": max_diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latent-size", type=int, default=16)
    parser.add_argument("--channels", type=str, default="32,64")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"))
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    channels = tuple(int(c) for c in args.channels.split(","))

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        teacher, data = build_assets(root, args.latent_size, channels)
        train = bench_training(teacher, data, root / "out", args)
        recipe = train.pop("recipe")
        teacher_call = bench_teacher_call(recipe, args)

    params = sum(p.numel() for p in recipe.backbone.unet.parameters())
    print(f"device {train['device']}  torch threads {torch.get_num_threads()}  "
          f"teacher UNet {params / 1e6:.2f}M params  latents {args.latent_size}x{args.latent_size}"
          f"  batch {args.batch}  mixed_precision {args.mixed_precision}")
    print(f"training step      {train['s_per_step'] * 1e3:8.1f} ms/step  "
          f"{train['images_per_s']:8.1f} images/s  peak memory {train['peak_memory_mib']:.0f} MiB")
    print(f"teacher batched    {teacher_call['batched_s'] * 1e3:8.2f} ms  (one call, batch "
          f"{2 * args.batch})")
    print(f"teacher two calls  {teacher_call['two_calls_s'] * 1e3:8.2f} ms  (two calls, batch "
          f"{args.batch})")
    print(f"ratio two calls / batched = {teacher_call['two_calls_over_batched']:.2f}x  "
          f"(max |difference| {teacher_call['max_abs_difference']:.2e})")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "training": train, "teacher_call": teacher_call},
                                        indent=2))


if __name__ == "__main__":
    main()
