"""What ``rewardkit eval`` writes: ``results.json``, ``report.md``, ``grid.png``, ``steps.png``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from .runner import Evaluation, ModelSpec

GRID_PROMPTS = 8


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def with_spread(row: dict[str, Any], key: str, unit: str = "") -> str:
    """``row[key]`` with the lowest and highest round in brackets when it was timed in rounds
    (``12.3 (11.9-13.0)``), else the value alone."""
    value = row.get(key)
    if value is None or f"{key}_min" not in row:
        return _number(value) + (unit if value is not None else "")
    return (f"{_figure(value)}{unit} ({_figure(row[f'{key}_min'])}-"
            f"{_figure(row[f'{key}_max'])}{unit})")


def _figure(value: float) -> str:
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def results_table(results: dict[str, Any]) -> str:
    """The main table: one row per (model, steps), every metric (mean ± standard error)."""
    metrics = [m for m in results["metrics"] if m not in results["distribution_metrics"]]
    distribution = results["distribution_columns"]
    speedups = any("speedup" in row for row in results["rows"])
    header = ["model", "steps", *metrics, *distribution, "ms/image", "UNet evals/image", "images",
              *(["speed-up"] if speedups else [])]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in results["rows"]:
        cells = [row["model"], str(row["steps"])]
        for name in metrics:
            if f"{name}_se" in row:
                cells.append(f"{row[name]:.4f} ± {row[f'{name}_se']:.4f}")
            else:
                cells.append(_number(row.get(name)))
        cells += [_number(row.get(k)) for k in distribution]
        cells += [with_spread(row, "ms_per_image"), _number(row.get("unet_evaluations")),
                  str(row["num_images"])]
        if speedups:
            cells.append(with_spread(row, "speedup", "x"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def timing_note(results: dict[str, Any]) -> str:
    """How ms/image (and the speed-up) were measured."""
    timing = results.get("timing")
    if not timing:
        return ("ms/image: wall-clock sampling time per image while the images were sampled, "
                "model by model, after an untimed warm-up call; model loading excluded.")
    return (f"ms/image: the median of {timing['rounds']} rounds, in brackets the lowest and "
            f"highest round; each round times every row in turn on the same "
            f"{timing['images_per_round']} images (order reversed every other round), so load "
            "on the machine hits every row alike. Speed-up: the median of the per-round ratios "
            "of the first teacher row's ms/image to the row's.")


def category_tables(results: dict[str, Any]) -> str:
    """Per reward metric, its mean per prompt category (HPSv2 styles, Parti categories)."""
    blocks = []
    for name in results["metrics"]:
        key = f"{name}_by_category"  # reward metrics only
        rows = [row for row in results["rows"] if key in row]
        if not rows:
            continue
        categories = list(rows[0][key])
        lines = [f"**{name} by category**", "",
                 "| model | steps | " + " | ".join(categories) + " |",
                 "|" + "---|" * (len(categories) + 2)]
        for row in rows:
            lines.append(f"| {row['model']} | {row['steps']} | "
                         + " | ".join(f"{row[key][c]:.4f}" for c in categories) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def win_rate_table(results: dict[str, Any]) -> str:
    """Student vs teacher win rates with their bootstrap 95% intervals."""
    if not results["win_rates"]:
        return "No teacher in this evaluation, so no win rates."
    lines = ["| model | steps | metric | vs | win rate | 95% CI | prompts |", "|---|---|---|---|---|---|---|"]
    for w in results["win_rates"]:
        lines.append(f"| {w['model']} | {w['steps']} | {w['metric']} | {w['baseline']} | "
                     f"{w['win_rate']:.3f} | [{w['ci_low']:.3f}, {w['ci_high']:.3f}] | {w['pairs']} |")
    return "\n".join(lines)


def write_grid(evaluation: "Evaluation", models: Sequence["ModelSpec"], path: Path) -> Path:
    """Same prompt and seed across models: one column per (model, steps), one row per prompt."""
    from PIL import Image

    from ..plots import labelled_grid

    count = min(GRID_PROMPTS, len(evaluation.prompts.prompts))
    k = evaluation.images_per_prompt
    columns = []
    for model in models:
        for steps in model.steps:
            folder = evaluation.folder(model, steps)
            images = []
            for i in range(count):
                with Image.open(folder / f"{i * k:05d}.png") as image:
                    images.append(image.convert("RGB"))
            columns.append((f"{model.label} {steps} step{'s' if steps > 1 else ''}", images))
    side = max(columns[0][1][0].size)
    grid = labelled_grid(columns, evaluation.prompts.prompts[:count], scale=max(1, 96 // side))
    grid.save(path)
    return path


def write_steps_plot(results: dict[str, Any], path: Path) -> Path | None:
    """One panel per (reward metric, model with several step counts): the metric vs steps."""
    from PIL import Image

    from ..plots import PANEL_COLUMNS, PANEL_SIZE, line_panel

    panels = []
    for name in results["metrics"]:
        for model in dict.fromkeys(row["model"] for row in results["rows"]):
            rows = sorted((r for r in results["rows"] if r["model"] == model and name in r),
                          key=lambda r: r["steps"])
            if len(rows) > 1 and isinstance(rows[0][name], float):
                panels.append(line_panel([r["steps"] for r in rows], [r[name] for r in rows],
                                         f"{name}: {model} (x: steps)"))
    if not panels:
        return None
    columns = min(PANEL_COLUMNS, len(panels))
    width, height = PANEL_SIZE
    canvas = Image.new("RGB", (columns * width, math.ceil(len(panels) / columns) * height), "white")
    for index, panel in enumerate(panels):
        canvas.paste(panel, ((index % columns) * width, (index // columns) * height))
    canvas.save(path)
    return path


def write_report(evaluation: "Evaluation", models: Sequence["ModelSpec"],
                 results: dict[str, Any]) -> Path:
    """Write the four files into the evaluation's output folder; return ``report.md``."""
    out = evaluation.output_dir
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    grid = write_grid(evaluation, models, out / "grid.png")
    plot = write_steps_plot(results, out / "steps.png")
    prompt_set = results["prompt_set"]
    parts = [
        "# Evaluation", "",
        f"Prompt set `{prompt_set['name']}` ({prompt_set['prompts']} prompts"
        + (f", categories: {', '.join(prompt_set['categories'])}" if prompt_set["categories"] else "")
        + f"), {results['images_per_prompt']} image(s) per prompt, seeds {results['seeds']}.",
        "",
        f"Command: `{results['command']}`" if results["command"] else "",
        "",
        "Reward metrics are means over images ± their standard error; win rates compare each "
        "student with the teacher prompt by prompt (same seeds), with a bootstrap 95% interval.",
        "",
        timing_note(results),
        "", results_table(results), "", category_tables(results), "",
        "## Win rate against the teacher", "", win_rate_table(results), "",
        "## Samples", "", f"![samples]({grid.name})", "",
    ]
    if plot is not None:
        parts += ["## Metrics against steps", "", f"![steps]({plot.name})", ""]
    report = out / "report.md"
    report.write_text("\n".join(parts))
    return report
