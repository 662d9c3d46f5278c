"""Report pictures drawn with PIL only (no matplotlib): labelled image grids and training curves.

- :func:`labelled_grid`: one column per model (e.g. "teacher 50 steps", "student 1 step", ...),
  one row per prompt, images upscaled with nearest-neighbour so 32 px samples stay legible;
  column titles on top, the prompts (wrapped) on the left.
- :func:`training_curves`: one small panel per numeric key of a run's ``metrics.jsonl``
  (``lcd_loss``, ``reward_loss``, ``expert_reward``, ``proxy_accuracy`` ...), the raw values in a
  light colour and a moving average in a dark one, with min/max axis labels.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Sequence

#: Layout of :func:`labelled_grid` (pixels).
LABEL_WIDTH = 180
HEADER_HEIGHT = 28
GAP = 2
#: Size of one panel of :func:`training_curves` and panels per row.
PANEL_SIZE = (360, 220)
PANEL_COLUMNS = 2
#: Keys plotted first, in this order, when present; other numeric keys follow alphabetically.
PREFERRED_KEYS = ("lcd_loss", "reward_loss", "expert_reward", "lrm_reward",
                  "proxy_heldout_accuracy", "proxy_heldout_accuracy_generated_vs_generated",
                  "proxy_heldout_accuracy_generated_vs_ground_truth", "proxy_accuracy",
                  "proxy_loss", "expert_reward_target", "expert_reward_gt", "proxy_logit_scale",
                  "lr", "step_time")
SKIPPED_KEYS = ("step",)

BACKGROUND = (255, 255, 255)
INK = (30, 30, 30)
FAINT = (170, 190, 225)
LINE = (25, 70, 170)
GRID = (225, 225, 225)


def _font() -> Any:
    from PIL import ImageFont

    return ImageFont.load_default()


def _wrap(draw: Any, text: str, width: int, font: Any) -> list[str]:
    """Greedy word wrap of ``text`` to lines no wider than ``width`` pixels."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if current and draw.textlength(candidate, font=font) > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    if current:
        lines.append(current)
    return lines


def grid_size(columns: int, rows: int, cell: int) -> tuple[int, int]:
    """The pixel size :func:`labelled_grid` gives ``columns`` x ``rows`` cells of ``cell`` px."""
    return LABEL_WIDTH + columns * (cell + GAP), HEADER_HEIGHT + rows * (cell + GAP)


def labelled_grid(columns: Sequence[tuple[str, Sequence[Any]]], row_labels: Sequence[str],
                  scale: int = 3) -> Any:
    """A PIL image: one titled column per ``(title, images)``, one labelled row per prompt.

    Every column must hold ``len(row_labels)`` same-sized PIL images; they are upscaled
    ``scale`` times (nearest neighbour). The size is :func:`grid_size`.
    """
    from PIL import Image, ImageDraw

    if not columns or not row_labels:
        raise ValueError("labelled_grid needs at least one column and one row")
    for title, images in columns:
        if len(images) != len(row_labels):
            raise ValueError(f"column '{title}' has {len(images)} images for {len(row_labels)} rows")
    side = max(columns[0][1][0].size)
    cell = side * scale
    canvas = Image.new("RGB", grid_size(len(columns), len(row_labels), cell), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font()
    for c, (title, images) in enumerate(columns):
        x = LABEL_WIDTH + c * (cell + GAP)
        for line_index, line in enumerate(_wrap(draw, title, cell, font)[:2]):
            draw.text((x + 2, 2 + 12 * line_index), line, fill=INK, font=font)
        for r, image in enumerate(images):
            tile = image.convert("RGB").resize((cell, cell), Image.NEAREST)
            canvas.paste(tile, (x, HEADER_HEIGHT + r * (cell + GAP)))
    max_lines = max(1, (cell - 4) // 12)
    for r, label in enumerate(row_labels):
        y = HEADER_HEIGHT + r * (cell + GAP)
        for line_index, line in enumerate(_wrap(draw, label, LABEL_WIDTH - 8, font)[:max_lines]):
            draw.text((4, y + 2 + 12 * line_index), line, fill=INK, font=font)
    return canvas


def numeric_series(rows: Iterable[dict[str, Any]]) -> dict[str, tuple[list[float], list[float]]]:
    """``{key: (steps, values)}`` of every numeric key in metrics rows (``None`` values skipped)."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for index, row in enumerate(rows):
        x = float(row.get("step", index))
        for key, value in row.items():
            if key in SKIPPED_KEYS or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(value):
                continue
            xs, ys = series.setdefault(key, ([], []))
            xs.append(x)
            ys.append(float(value))
    order = [k for k in PREFERRED_KEYS if k in series] + sorted(k for k in series if k not in PREFERRED_KEYS)
    return {key: series[key] for key in order}


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over ``window`` values (shorter at the start)."""
    out, total = [], 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        out.append(total / min(index + 1, window))
    return out


def _format(value: float) -> str:
    return f"{value:.3g}"


def line_panel(xs: Sequence[float], ys: Sequence[float], title: str,
               size: tuple[int, int] = PANEL_SIZE) -> Any:
    """One curve (raw values faint, moving average dark) with a title and min/max labels."""
    from PIL import Image, ImageDraw

    width, height = size
    panel = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(panel)
    font = _font()
    left, right, top, bottom = 52, width - 10, 22, height - 22
    draw.text((left, 4), title, fill=INK, font=font)
    draw.rectangle((left, top, right, bottom), outline=GRID)
    if not ys:
        return panel
    low, high = min(ys), max(ys)
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    x_low, x_high = min(xs), max(xs)
    x_span = (x_high - x_low) or 1.0

    def point(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x_low) / x_span * (right - left),
                bottom - (y - low) / (high - low) * (bottom - top))

    for fraction in (0.25, 0.5, 0.75):
        y = top + fraction * (bottom - top)
        draw.line((left, y, right, y), fill=GRID)
    raw = [point(x, y) for x, y in zip(xs, ys)]
    smooth = [point(x, y) for x, y in zip(xs, moving_average(ys, max(1, len(ys) // 20)))]
    if len(raw) > 1:
        draw.line(raw, fill=FAINT, width=1)
        draw.line(smooth, fill=LINE, width=2)
    else:
        x, y = raw[0]
        draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=LINE)
    draw.text((2, top - 5), _format(high), fill=INK, font=font)
    draw.text((2, bottom - 7), _format(low), fill=INK, font=font)
    draw.text((left, bottom + 5), _format(x_low), fill=INK, font=font)
    label = f"step {_format(x_high)}"
    draw.text((right - draw.textlength(label, font=font), bottom + 5), label, fill=INK, font=font)
    return panel


def training_curves(rows: Sequence[dict[str, Any]], keys: Sequence[str] | None = None) -> Any | None:
    """A PIL image of one :func:`line_panel` per metric, ``PANEL_COLUMNS`` per row; ``None`` if none."""
    from PIL import Image

    series = numeric_series(rows)
    if keys is not None:
        series = {key: series[key] for key in keys if key in series}
    if not series:
        return None
    columns = min(PANEL_COLUMNS, len(series))
    n_rows = math.ceil(len(series) / columns)
    width, height = PANEL_SIZE
    canvas = Image.new("RGB", (columns * width, n_rows * height), BACKGROUND)
    for index, (key, (xs, ys)) in enumerate(series.items()):
        canvas.paste(line_panel(xs, ys, key), ((index % columns) * width, (index // columns) * height))
    return canvas


def plot_training_curves(metrics_path: str | Path, output: str | Path,
                         keys: Sequence[str] | None = None) -> Path | None:
    """Draw ``metrics.jsonl`` to the PNG ``output``; ``None`` (nothing written) without numbers."""
    from .training.metrics import read_metrics

    metrics_path = Path(metrics_path)
    if not metrics_path.is_file():
        return None
    image = training_curves(read_metrics(metrics_path), keys)
    if image is None:
        return None
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    image.save(output)
    return output
