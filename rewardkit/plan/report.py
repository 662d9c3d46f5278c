"""The memory plan as the terminal shows it (``rewardkit run RECIPE ... --plan``), and the
``--gpu_memory`` sizes it reads (``80GiB``, ``80GB``, ``24G``, ``81920MiB``)."""

from __future__ import annotations

import re

from rich.table import Table

from ..errors import ConfigError
from .plan import GiB, MemoryPlan

_UNITS = {"": 2 ** 30, "g": 2 ** 30, "gib": 2 ** 30, "gb": 10 ** 9, "m": 2 ** 20,
          "mib": 2 ** 20, "mb": 10 ** 6, "t": 2 ** 40, "tib": 2 ** 40, "tb": 10 ** 12}


def parse_memory(text: str, key: str = "--gpu_memory") -> float:
    """Bytes of a size: a number and a unit (GiB, GB, MiB, MB, TiB, TB; G, M and T are binary;
    no unit: GiB)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS or float(match.group(1)) <= 0:
        raise ConfigError(f"{key}: '{text}' is not a memory size; write e.g. 80GiB, 80GB or "
                          "24G")
    return float(match.group(1)) * _UNITS[unit]


def gib(value: float) -> str:
    """GiB with two decimals (three under 0.1 GiB, so a tiny model's figures show)."""
    value = value / GiB
    return f"{value:.2f}" if value >= 0.1 or value == 0 else f"{value:.3f}"


def plan_table(plan: MemoryPlan, gpu_memory: float | None = None) -> Table:
    """The plan as one table: resident lines, the step's phases, per-sample activations, the
    total and (with ``gpu_memory``) whether it fits."""
    config = plan.config
    title = (f"memory plan per GPU: {plan.recipe}, {config.pretrained_teacher_model}, "
             f"{config.resolution} px, batch {config.train_batch_size}, "
             f"{config.mixed_precision}, {plan.launch.describe()}")
    table = Table(title=title, title_justify="left")
    table.add_column("")
    table.add_column("GiB", justify="right")
    table.add_column("how", overflow="fold")
    table.add_row("[bold]resident[/]", gib(plan.resident_bytes), "")
    for line in plan.resident:
        table.add_row("  " + line.name, gib(line.bytes), line.note)
    peak = plan.peak_phase
    for name, lines in plan.phases.items():
        table.add_section()
        mark = " [bold](peak)[/]" if name == peak else ""
        table.add_row(f"[bold]{name}[/]{mark}", gib(plan.phase_bytes(name)),
                      "the largest of these at once")
        for line in lines:
            table.add_row("  " + line.name, gib(line.bytes), line.note)
    if plan.per_sample:
        table.add_section()
        table.add_row("[bold]activations per sample[/]", "", f"at {config.resolution} px")
        for line in plan.per_sample:
            table.add_row("  " + line.name, gib(line.bytes), line.note)
    table.add_section()
    table.add_row("[bold]total (tensors at the peak)[/]", f"[bold]{gib(plan.total)}[/]",
                  f"resident + {peak}")
    if gpu_memory:
        needed = plan.needed()
        verdict = "[green]fits[/]" if plan.fits(gpu_memory) else "[red]does not fit[/]"
        table.add_row(f"[bold]{verdict} {gib(gpu_memory)} GiB[/]", gib(needed),
                      "with the CUDA context and allocator slack (1 GiB + 5%)"
                      if plan.launch.device == "cuda" else "")
    if plan.suggestions:
        table.add_section()
        table.add_row("[bold]to fit[/]" if gpu_memory and not plan.fits(gpu_memory)
                      else "[bold]alternatives[/]", "", "")
        for item in plan.suggestions:
            mark = "[green]fits[/]" if item.fits else "[red]no[/]"
            table.add_row(f"  {item.label}", gib(item.needed), f"{mark}: {item.flags}")
    return table


__all__ = ["parse_memory", "plan_table"]
