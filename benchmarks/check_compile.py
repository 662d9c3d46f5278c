"""Does ``compile`` train the same student as eager? Gradients and losses, compiled vs eager.

Two checks on the tiny test SD pipeline (built offline), for one ``torch.compile`` backend:

1. **Gradients of one UNet call**: the student UNet's forward and backward, eager and compiled
   with the options rewardkit's ``compile`` key uses (``rewardkit.training.compile``). Prints
   the number of parameters whose gradient differs by more than 50% (relative norm) among those
   with a gradient norm above 1e-3, and the largest relative difference.
2. **Training losses**: ``--steps`` steps of the ``lcd`` recipe with ``compile`` off and on
   (each run seeds itself), and the first and the steady-state (median) s/step of each.

``--no-workaround`` runs both with torch's default options instead, to see the torch 2.13 CPU
layout bug (zero gradients before the first up-sampler, losses apart from the second step).

Compiling the tiny UNet with inductor takes about a minute per module on 2 CPU cores; aot_eager
takes seconds. On a GPU machine: ``python benchmarks/check_compile.py --device cuda``.

    python benchmarks/check_compile.py [--backend inductor] [--steps 3] [--no-workaround]
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch


def gradient_check(teacher: Path, backend: str, device: torch.device) -> dict:
    from diffusers import UNet2DConditionModel

    from rewardkit.training.compile import compile_options

    eager = UNet2DConditionModel.from_pretrained(teacher, subfolder="unet").to(device)
    compiled = copy.deepcopy(eager)
    kwargs = compile_options(backend, None, device)
    compiled.compile(**kwargs)
    generator = torch.Generator().manual_seed(0)
    config = eager.config
    sample = torch.randn(2, config.in_channels, 8, 8, generator=generator).to(device)
    timesteps = torch.tensor([500, 300], device=device)
    context = torch.randn(2, 4, config.cross_attention_dim, generator=generator).to(device)

    def gradients(unet):
        out = unet(sample, timesteps, context).sample
        weights = torch.linspace(-1, 1, out.numel(), device=device).view_as(out)
        (out * weights).sum().backward()
        return {name: p.grad.detach().clone() for name, p in unet.named_parameters()}

    began = time.perf_counter()
    reference, ours = gradients(eager), gradients(compiled)
    relative = {name: float((ours[name] - g).norm() / g.norm()) for name, g in reference.items()
                if g.norm() > 1e-3}  # biases cancelled by a GroupNorm have ~0 gradient
    wrong = sorted(name for name, value in relative.items() if value > 0.5)
    return {"compile_kwargs": kwargs, "parameters": len(relative),
            "wrong_gradients": len(wrong), "first_wrong": wrong[:3],
            "max_relative_difference": max(relative.values()),
            "seconds": round(time.perf_counter() - began, 1)}


def training_check(teacher: Path, data: Path, root: Path, backend: str, steps: int) -> dict:
    """The recipe runs where accelerate puts it (the GPU when there is one)."""
    from rewardkit.recipes.lcd import LCDRecipe
    from rewardkit.testing.tiny_training import tiny_lcd_config

    result = {}
    for flag in (False, True):
        recipe = LCDRecipe(tiny_lcd_config(teacher, data, root / f"run-{flag}",
                                           max_train_steps=steps + 2, compile=flag,
                                           compile_backend=backend))
        recipe.setup()
        losses, times = [], []
        for _ in range(steps + 2):
            began = time.perf_counter()
            losses.append(recipe.train_step()["lcd_loss"])
            times.append(time.perf_counter() - began)
        result["compiled" if flag else "eager"] = {
            "losses": losses[:steps], "first_step_s": round(times[0], 2),
            "steady_s_per_step": round(sorted(times[1:])[len(times[1:]) // 2], 4)}
    eager, compiled = result["eager"]["losses"], result["compiled"]["losses"]
    result["max_relative_loss_difference"] = max(
        abs(a - b) / max(abs(a), 1e-12) for a, b in zip(eager, compiled))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-workaround", action="store_true",
                        help="compile with torch's default options (shows the 2.13 CPU bug)")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline
    from rewardkit.testing.tiny_training import write_tiny_image_folder

    device = torch.device(args.device)
    if args.no_workaround:
        import rewardkit.training.compile as compile_module

        compile_module.layout_bug = lambda *_, **__: False
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        teacher = build_tiny_sd_pipeline(root / "teacher")
        data = write_tiny_image_folder(root / "data", count=8, size=16)
        report = {"torch": torch.__version__, "backend": args.backend, "device": args.device,
                  "workaround": not args.no_workaround,
                  "gradients": gradient_check(teacher, args.backend, device)}
        print(json.dumps(report["gradients"]), flush=True)
        if not args.skip_training:
            report["training"] = training_check(teacher, data, root, args.backend, args.steps)
        print(json.dumps(report, indent=2))
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
