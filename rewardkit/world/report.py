"""A run's report: ``report.md`` (metrics table, command, config) and its PNG figures.

Files written into the run folder by :func:`write_report`::

    report.md             the metrics table, the command that produced it, the run's config
    eval.json             the table's rows (machine-readable); with a latent proxy RM, each
                          student row also carries the proxy's final held-out accuracy
    comparison.png        teacher (50 DDIM steps + CFG) next to the student at 1, 2 and 4 steps
    training_curves.png   one panel per numeric key of metrics.jsonl (when the run has one)

:func:`comparison_columns` samples the grid's columns on fixed prompts with
:func:`rewardkit.sampling.sample_teacher` / :func:`~rewardkit.sampling.sample_student`.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

from .evaluate import DEFAULT_GUIDANCE_SCALE, EvalRow
from ..plots import labelled_grid, plot_training_curves
from ..secrets import redact_command

HELDOUT = "proxy_heldout_accuracy"
#: Steps at the end of a run over which the in-batch proxy accuracy is averaged in the report.
IN_BATCH_WINDOW = 100

REPORT = "report.md"
EVAL_JSON = "eval.json"
COMPARISON_PNG = "comparison.png"
CURVES_PNG = "training_curves.png"

TABLE_NOTE = (
    "Judge reward: mean `world-judge` score in [0, 1] (rule-based, non-differentiable) ± its "
    "standard error over the images. Scorer "
    "reward: mean `world-scorer` score (learned, differentiable). Frechet distance: between "
    "`WorldFeatureNet` features of the samples and of real renders of the same prompts (lower is "
    "better). ms/image: sampling wall-clock time per image after a warm-up batch, model loading "
    "excluded, same process for every row. UNet evals/image: UNet evaluations per image with the "
    "conditional and unconditional passes of classifier-free guidance counted separately (a "
    "teacher batches both into one call, so it makes half as many forward calls). Speed-up: the "
    "teacher row's ms/image divided by the row's.")
#: What replaces the ms/image and speed-up sentences when the rows were timed in rounds.
ROUNDS_NOTE = (
    "ms/image: the median of {rounds} rounds, in brackets the lowest and highest round; each "
    "round times every row in turn on the same batch of prompts and seeds (teacher and students "
    "interleaved, order reversed every other round, each row repeating its batch to last about "
    "as long as the teacher's, after a warm-up call; model loading excluded), so load on the "
    "machine slows every row alike. Speed-up: the median of the "
    "per-round ratios of the teacher row's ms/image to the row's, in brackets the lowest and "
    "highest.")


def table_note(rows: Sequence[EvalRow]) -> str:
    """The table's legend: how each column was measured."""
    rounds = max((len(row.ms_per_image_rounds) for row in rows), default=0)
    if not rounds:
        return TABLE_NOTE
    quality, rest = TABLE_NOTE.split(" ms/image: ", 1)
    evals = "UNet evals/image: " + rest.split("UNet evals/image: ", 1)[1].split(" Speed-up: ", 1)[0]
    return f"{quality} {evals} {ROUNDS_NOTE.format(rounds=rounds)}"


def _steps_label(steps: int) -> str:
    return f"{steps} step" + ("" if steps == 1 else "s")


def _spread(value: float, low: float | None, high: float | None, unit: str = "") -> str:
    """``value`` to one decimal, with ``(low-high)`` when the row was timed in rounds."""
    if low is None or high is None:
        return f"{value:.1f}{unit}"
    return f"{value:.1f}{unit} ({low:.1f}-{high:.1f}{unit})"


def format_table(rows: Sequence[EvalRow]) -> str:
    """The rows as a markdown table (one line per model and step count)."""
    header = ("| model | steps | judge reward ↑ | scorer reward ↑ | Frechet distance ↓ | ms/image "
              "| UNet evals/image | speed-up |")
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        speedup = (_spread(row.speedup, row.speedup_min, row.speedup_max, "x")
                   if row.speedup is not None else "-")
        judged = f"{row.judge_reward:.3f}"
        if row.judge_reward_se:
            judged += f" ± {row.judge_reward_se:.3f}"
        ms = _spread(row.ms_per_image, row.ms_per_image_min, row.ms_per_image_max)
        lines.append(f"| {row.name} | {row.steps} | {judged} | {row.scorer_reward:.3f} "
                     f"| {row.frechet_distance:.4g} | {ms} "
                     f"| {row.unet_evaluations} | {speedup} |")
    return "\n".join(lines)


def comparison_columns(teacher_dir: str | Path, student_dir: str | Path, prompts: Sequence[str], *,
                       teacher_steps: int = 50, student_steps: Sequence[int] = (1, 2, 4),
                       guidance_scale: float = DEFAULT_GUIDANCE_SCALE, seed: int = 0,
                       device: str = "cpu") -> list[tuple[str, list[Any]]]:
    """``[(title, images)]``: the teacher (DDIM + CFG), then the student at each step count.

    Image ``i`` of every column uses seed ``seed + i``, so a row compares like with like.
    """
    from ..sampling import sample_student, sample_teacher

    prompts = list(prompts)
    teacher = sample_teacher(teacher_dir, prompts, steps=teacher_steps, guidance_scale=guidance_scale,
                             seed=seed, device=device)
    columns = [(f"teacher {_steps_label(teacher_steps)} + CFG", teacher.images)]
    for steps in student_steps:
        student = sample_student(student_dir, prompts, steps=steps, guidance_scale=guidance_scale,
                                 seed=seed, device=device)
        columns.append((f"student {_steps_label(steps)}", student.images))
    return columns


def proxy_summary(metrics_rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The proxy's held-out accuracy at the first and last measurement, and the in-batch one.

    Keys: ``proxy_heldout_accuracy*`` (last measurement), ``initial_proxy_heldout_accuracy*``
    (first one, before training) and ``proxy_accuracy_last_{IN_BATCH_WINDOW}`` (mean in-batch
    accuracy over the run's last steps). Empty for runs without a proxy.
    """
    measured = [row for row in metrics_rows if isinstance(row.get(HELDOUT), (int, float))]
    summary: dict[str, float] = {}
    if measured:
        for key, value in measured[0].items():
            if key.startswith(HELDOUT):
                summary[f"initial_{key}"] = float(value)
        for key, value in measured[-1].items():
            if key.startswith(HELDOUT):
                summary[key] = float(value)
        summary["proxy_heldout_step"] = float(measured[-1].get("step", 0))
    in_batch = [row["proxy_accuracy"] for row in metrics_rows
                if isinstance(row.get("proxy_accuracy"), (int, float))][-IN_BATCH_WINDOW:]
    if in_batch:
        summary[f"proxy_accuracy_last_{IN_BATCH_WINDOW}"] = sum(in_batch) / len(in_batch)
    return summary


def format_proxy_summary(summary: dict[str, float]) -> str:
    """The proxy section of ``report.md`` (empty without a held-out measurement)."""
    if HELDOUT not in summary:
        return ""
    lines = ["## Latent proxy RM: agreement with the expert", "",
             "Pairwise agreement with the expert RM on the held-out preference set (candidates "
             "the proxy never trained on: ground truth, teacher samples at several step counts "
             "and guidance scales, student samples, noised ground truth; scored once by the "
             "expert).", "",
             "| pairs | before training | end of training |", "|---|---:|---:|"]
    for suffix, label in (("", "all"), ("_generated_vs_generated", "generated vs generated"),
                          ("_generated_vs_ground_truth", "generated vs ground truth")):
        key = HELDOUT + suffix
        if key in summary:
            before = summary.get(f"initial_{key}")
            lines.append(f"| {label} | {before:.3f} | {summary[key]:.3f} |" if before is not None
                         else f"| {label} | - | {summary[key]:.3f} |")
    window = f"proxy_accuracy_last_{IN_BATCH_WINDOW}"
    if window in summary:
        lines += ["", f"In-batch `proxy_accuracy` (on the candidates of each update, before it), "
                      f"mean of the last {IN_BATCH_WINDOW} steps: {summary[window]:.3f}."]
    return "\n".join(lines)


def write_report(run_dir: str | Path, rows: Sequence[EvalRow], *,
                 columns: Sequence[tuple[str, Sequence[Any]]] | None = None,
                 grid_prompts: Sequence[str] | None = None, command: str | None = None,
                 config: dict[str, Any] | None = None, title: str = "rewardkit run report",
                 notes: str | None = None) -> Path:
    """Write ``report.md``, ``eval.json`` and the PNGs into ``run_dir``; returns ``report.md``.

    ``columns`` + ``grid_prompts`` (from :func:`comparison_columns`) make ``comparison.png``;
    ``training_curves.png`` is drawn from ``run_dir/metrics.jsonl`` if it exists. ``config``
    defaults to ``run_dir/config.json`` (written by the recipes); ``command`` to this process's
    command line.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if config is None and (run_dir / "config.json").is_file():
        config = json.loads((run_dir / "config.json").read_text())
    command = command or shlex.join(["rewardkit" if Path(sys.argv[0]).name == "rewardkit"
                                     else sys.argv[0], *redact_command(sys.argv[1:])])
    proxy, guard = {}, ""
    if (run_dir / "metrics.jsonl").is_file():
        from ..training.guard import guard_report
        from ..training.metrics import read_metrics

        metrics_rows = read_metrics(run_dir / "metrics.jsonl")
        proxy, guard = proxy_summary(metrics_rows), guard_report(metrics_rows)
    records = [row.as_dict() for row in rows]
    for record in records:
        if record["kind"] == "student":
            record.update(proxy)
    (run_dir / EVAL_JSON).write_text(json.dumps(records, indent=2))

    figures = []
    if columns and grid_prompts:
        labelled_grid(columns, list(grid_prompts)).save(run_dir / COMPARISON_PNG)
        figures.append(("Teacher vs student on the validation prompts", COMPARISON_PNG))
    if plot_training_curves(run_dir / "metrics.jsonl", run_dir / CURVES_PNG) is not None:
        figures.append(("Training curves (metrics.jsonl; faint: raw, dark: moving average)",
                        CURVES_PNG))

    parts = [f"# {title}", "", "## Metrics", "", format_table(rows), "", table_note(rows), ""]
    if format_proxy_summary(proxy):
        parts += [format_proxy_summary(proxy), ""]
    if guard:
        parts += [guard, ""]
    if notes:
        parts += [notes, ""]
    for caption, name in figures:
        parts += [f"## {caption}", "", f"![{caption}]({name})", ""]
    parts += ["## Command", "", "```", command, "```", ""]
    if config:
        parts += ["## Config", "", "```json", json.dumps(config, indent=2, default=str), "```", ""]
    path = run_dir / REPORT
    path.write_text("\n".join(parts))
    return path
