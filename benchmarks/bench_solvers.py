"""Benchmark: the guided teacher as one batched call on [cond; uncond] vs two calls, and ddim vs heun.

Builds an SD-architecture UNet offline (through ``rewardkit.testing.tiny_sd`` when it is
available, so it loads with ``from_pretrained`` like a real teacher; else directly from a config),
then times one guided solver step of each kind and prints the ratio two-calls / batched.

    python benchmarks/bench_solvers.py                       # tiny UNet, CPU
    python benchmarks/bench_solvers.py --channels 64,128 --sample-size 32 --batch 8
    python benchmarks/bench_solvers.py --device cuda --dtype float16 --channels 320,640 --sample-size 64

Numbers depend on the machine; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from rewardkit.backbones import Conditioning
from rewardkit.schedule import NoiseSchedule
from rewardkit.solvers import DDIMSolver, HeunSolver, teacher_denoiser
from rewardkit.testing.solver_contract import sd_alphas_cumprod


def build_unet(channels: tuple[int, ...], sample_size: int, cross_dim: int, folder: Path):
    """An SD-architecture UNet: from the tiny pipeline builder when it exists, else from a config."""
    try:
        from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline
    except ImportError:
        build_tiny_sd_pipeline = None
    from diffusers import UNet2DConditionModel

    if build_tiny_sd_pipeline is not None:
        path = build_tiny_sd_pipeline(folder / "teacher", sample_size=sample_size,
                                      unet_block_out_channels=channels,
                                      cross_attention_dim=cross_dim)
        return UNet2DConditionModel.from_pretrained(path / "unet"), "tiny_sd pipeline"
    n = len(channels)
    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, block_out_channels=channels,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1), layers_per_block=1,
        attention_head_dim=8, cross_attention_dim=cross_dim, use_linear_projection=True)
    return unet, "UNet2DConditionModel config"


def timed(fn, repeats: int, warmup: int, device: torch.device) -> list[float]:
    """Wall-clock seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--sample-size", type=int, default=16, help="latent side")
    parser.add_argument("--channels", default="32,64", help="UNet block_out_channels")
    parser.add_argument("--cross-dim", type=int, default=32, help="text embedding width")
    parser.add_argument("--text-len", type=int, default=77)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    channels = tuple(int(c) for c in args.channels.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        unet, source = build_unet(channels, args.sample_size, args.cross_dim, Path(tmp))
    unet = unet.to(device).eval().requires_grad_(False)
    if dtype != torch.float32:
        unet = unet.to(dtype=dtype)
    abar = sd_alphas_cumprod()
    g = torch.Generator().manual_seed(0)
    z = torch.randn(args.batch, 4, args.sample_size, args.sample_size, generator=g).to(device, dtype)
    embeds = torch.randn(args.batch, args.text_len, args.cross_dim, generator=g).to(device, dtype)
    cond, uncond = Conditioning(embeds), Conditioning(torch.zeros_like(embeds))
    w = (torch.rand(args.batch, generator=g) * 10 + 5).to(device)

    def unet_fn(latents, t, c):
        return unet(latents, t, encoder_hidden_states=c.prompt_embeds).sample

    params = sum(p.numel() for p in unet.parameters())
    print(f"teacher: {source}, {params / 1e6:.2f}M parameters, block_out_channels={channels}; "
          f"device={device} dtype={args.dtype} batch={args.batch} latent={args.sample_size}^2 "
          f"threads={args.threads}")
    results: dict[tuple[str, bool], float] = {}
    for cls in (DDIMSolver, HeunSolver):
        solver = cls(abar)
        index = solver.sample_indices(args.batch, generator=g).to(device)
        for batched in (True, False):
            denoise = teacher_denoiser(unet_fn, cond, uncond, NoiseSchedule(abar, "epsilon"), w,
                                       batched=batched)
            with torch.inference_mode():
                times = timed(lambda: solver.step(denoise, z, index), args.repeats, args.warmup, device)
            median = statistics.median(times)
            results[(cls.name, batched)] = median
            print(f"  {cls.name:5s} {'one batched call' if batched else 'two calls       '}: "
                  f"median {median * 1e3:8.2f} ms  (min {min(times) * 1e3:.2f}, "
                  f"max {max(times) * 1e3:.2f}, n={len(times)})")
    for name in ("ddim", "heun"):
        ratio = results[(name, False)] / results[(name, True)]
        print(f"{name}: two calls / batched = {ratio:.2f}x")
    print(f"heun / ddim (batched) = {results[('heun', True)] / results[('ddim', True)]:.2f}x")


if __name__ == "__main__":
    main()
