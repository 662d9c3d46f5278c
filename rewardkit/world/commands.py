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
    teacher_kind: str = typer.Option("unet", "--teacher", help="unet (the world: VAE, UNet "
                                     "teacher, judges, LRM) or flow (a flow-matching MMDiT "
                                     "teacher in SD3 format on a built world's VAE and text "
                                     "encoder, ~45 min on 2 CPU cores; --minutes is its "
                                     "transformer's budget)."),
    source: Optional[Path] = typer.Option(None, "--source", help="With --teacher flow: the world "
                                          "UNet teacher whose VAE and text encoder are reused "
                                          "(default: OUT/teacher, else the shipped one)."),
) -> None:
    """Train the world's teacher (VAE, UNet), world-scorer RM and feature net; write them to --out.
    With --teacher flow, train the world's flow-matching teacher instead."""
    from ..errors import ConfigError
    from .assets import ASSETS
    from .build import BUILD_FILE, build_world

    if teacher_kind not in ("unet", "flow"):
        raise ConfigError(f"--teacher must be unet or flow, got '{teacher_kind}'")
    if teacher_kind == "flow":
        _build_flow(out, size, minutes, seed, progress, source)
        return
    if source is not None:
        raise ConfigError("--source is for --teacher flow (the UNet world builds its own VAE "
                          "and text encoder)")

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


def _build_flow(out: Optional[Path], size: str, minutes: Optional[float], seed: int,
                progress: bool, source: Optional[Path]) -> None:
    from .assets import ASSETS
    from .flow_build import FLOW_BUILD_FILE, build_flow_world

    report = build_flow_world(out, size=size, minutes=minutes, seed=seed, progress=progress,
                              source=source)
    quality, teacher = report["quality"], report["teacher"]
    console.print(
        f"flow teacher judge reward {quality['validation']['judge_reward']:.3f} at "
        f"{quality['steps']} Euler steps + CFG {quality['guidance_scale']} (untrained "
        f"transformer {quality['untrained_validation']['judge_reward']:.3f}, real renders "
        f"{quality['renders_validation']['judge_reward']:.3f}); {teacher['transformer']['steps']} "
        f"steps, {teacher['megabytes']} MB", highlight=False)
    console.print(f"[green]wrote[/] {(out or ASSETS) / FLOW_BUILD_FILE} "
                  f"({report['seconds']['total'] / 60:.1f} min)", highlight=False)
