"""``rewardkit world ...``: build the embedded world (teacher, scorer RM, feature net)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

world_app = typer.Typer(help="The embedded world: build its teacher and judges.", no_args_is_help=True)
console = Console()


@world_app.command("build")
def build_command(
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: the package's "
                                                           "shipped assets folder)."),
    size: str = typer.Option("full", "--size", help="full (the shipped world, ~35 min on 2 CPU "
                                                    "cores) or tiny (a smoke build in seconds)."),
    minutes: Optional[float] = typer.Option(None, "--minutes", help="Time budget of the teacher's "
                                                                    "VAE + UNet training."),
    seed: int = typer.Option(0, "--seed", help="Seeds weight initialisation and training order."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Train the world's teacher (VAE, UNet), world-scorer RM and feature net; write them to --out."""
    from .assets import ASSETS
    from .build import BUILD_FILE, build_world

    report = build_world(out, size=size, minutes=minutes, seed=seed, progress=progress)
    quality = report["quality"]
    teacher = quality["teacher"]
    console.print(
        f"teacher judge reward {teacher['validation']['judge_reward']:.3f} at {teacher['steps']} "
        f"DDIM steps + CFG {teacher['guidance_scale']} (untrained UNet "
        f"{teacher['untrained_unet_validation']['judge_reward']:.3f}, real renders "
        f"{teacher['renders_validation']['judge_reward']:.3f}); scorer-judge correlation "
        f"{quality['world-scorer']['correlation_with_judge']:.2f}", highlight=False)
    console.print(f"[green]wrote[/] {(out or ASSETS) / BUILD_FILE} "
                  f"({report['seconds']['total'] / 60:.1f} min)", highlight=False)
