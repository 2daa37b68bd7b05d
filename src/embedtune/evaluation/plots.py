"""Plots of STS results: grouped bar charts (``report.compare``), score-vs-step curves, quality against speed."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from ..io import atomic_path

MAIN_METRIC = "cosine_spearman"


def _figure(width: float, height: float):
    """A matplotlib Figure drawn with the Agg canvas (no pyplot global state, no display needed)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'embedtune[plot]'") from None
    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save_png(figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return path


def plot_bars(groups: Sequence[str], series: dict[str, Sequence[float | None]], path: str | Path, *,
              ylabel: str, title: str) -> Path:
    """A grouped bar chart: one group of bars per entry of ``groups`` (benchmarks, say), one bar per series
    (a run) in each, a gap where a value is None. The legend sits below the axes: inside, it would cover
    the tallest bars.

    When every value lies high above zero (trained models' STS scores: 70-90), the axis starts a little
    below the lowest (:func:`bar_floor`, a multiple of 5, named in the y label), so that the differences
    between runs, the point of the chart, are visible. Up to 20 series get a colour each.

    Raises:
        ImportError: matplotlib is missing (install the ``plot`` extra).
    """
    import matplotlib
    import numpy as np

    rows = -(-len(series) // 4)  # legend rows
    n = len(groups) - 1  # the width as sized for the benchmarks, before a mean group was added
    width_in = min(20.0, max(6.0, 1.0 + 0.35 * n * len(series) + 0.6 * n))
    figure = _figure(width=width_in, height=4.0 + 0.25 * rows)
    ax = figure.add_subplot(1, 1, 1)
    x = np.arange(len(groups))
    width = 0.8 / len(series)
    palette = matplotlib.colormaps["tab20" if len(series) > 10 else "tab10"].colors
    for i, (label, values) in enumerate(series.items()):
        heights = [np.nan if v is None else v for v in values]
        ax.bar(x - 0.4 + width * (i + 0.5), heights, width, label=label, color=palette[i % len(palette)])
    floor = bar_floor([v for values in series.values() for v in values if v is not None])
    if floor:
        ax.set_ylim(bottom=floor)
        ylabel = f"{ylabel} (axis from {floor:g})"
    ax.set_xticks(x)
    ax.set_xticklabels(groups, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=min(len(series), 4))
    ax.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return _save_png(figure, Path(path))


def bar_floor(values: Sequence[float]) -> float:
    """Where a bar chart's value axis starts: 0, unless every value is above 40; then 5 below the lowest
    value, rounded down to a multiple of 5 (scores of 71-88 get an axis from 65)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite or min(finite) <= 40:
        return 0.0
    return float(5 * math.floor((min(finite) - 5) / 5))


def plot_curve(points: Sequence[dict], path: str | Path, metric: str = MAIN_METRIC) -> Path:
    """Plot a score-vs-step curve (the trainer's dev evaluations) to a PNG.

    Args:
        points: dicts with ``step`` and ``metric`` (e.g. ``{"step": 100, "cosine_spearman": 78.1}``); an
            optional ``task`` key draws one line per task.
        path: PNG file to write (atomically).
        metric: the key to plot.

    Raises:
        ValueError: no point carries ``step`` and ``metric``.
        ImportError: matplotlib is missing (install the ``plot`` extra).
    """
    lines: dict[str, list[tuple[float, float]]] = {}
    for p in points:
        if "step" in p and p.get(metric) is not None:
            lines.setdefault(str(p.get("task", metric)), []).append((float(p["step"]), float(p[metric])))
    if not lines:
        raise ValueError(f"plot_curve: no point has both 'step' and {metric!r}")
    outside = len(lines) > 4  # a long legend inside the axes hides the curves: put it on the right
    longest = max(len(label) for label in lines)
    figure = _figure(6.0 + (0.07 * longest + 0.6 if outside else 0.0), 4.0)
    ax = figure.add_subplot(1, 1, 1)
    for label, xy in lines.items():
        xy.sort()
        ax.plot([a for a, _ in xy], [b for _, b in xy], marker="o", label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(f"{metric.replace('_', ' ')} x100")
    ax.grid(alpha=0.3)
    if outside:
        ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.02, 0.5))
    elif len(lines) > 1:
        ax.legend(fontsize="small")
    figure.tight_layout()
    return _save_png(figure, Path(path))


def _plain_number_formatter(minor: bool = False):
    """Tick labels as plain numbers (30, 100, 300) instead of powers of ten; minor ticks labelled at 2, 3 and 5
    of each decade only."""
    from matplotlib.ticker import FuncFormatter

    def fmt(x: float, _pos) -> str:
        if minor and round(x / 10 ** math.floor(math.log10(x))) not in (2, 3, 5):
            return ""
        return f"{x:g}"

    return FuncFormatter(fmt)


def plot_tradeoff(points: Sequence[dict], path: str | Path, *, xlabel: str = "sentences/s",
                  ylabel: str = "mean STS Spearman x100") -> Path:
    """Quality against speed: one marker per (model, precision), labelled, speed on a log axis.

    Args:
        points: dicts with ``label``, ``speed`` (x), ``score`` (y) and optional ``group`` (one colour and
            legend entry per group, e.g. "embedtune fp32", "peer bf16").
        path: PNG file to write (atomically).

    Raises:
        ValueError: no points.
        ImportError: matplotlib is missing (install the ``plot`` extra).
    """
    if not points:
        raise ValueError("plot_tradeoff: no points")
    figure = _figure(7.5, 4.8)
    ax = figure.add_subplot(1, 1, 1)
    groups: dict[str, list[dict]] = {}
    for p in points:
        groups.setdefault(str(p.get("group", "")), []).append(p)
    for group, members in groups.items():
        ax.scatter([p["speed"] for p in members], [p["score"] for p in members], label=group or None, s=40,
                   zorder=3)
    by_label: dict[str, list[dict]] = {}
    for p in points:
        by_label.setdefault(str(p["label"]), []).append(p)
    for label, same in by_label.items():  # one model in several precisions: joined, labelled once
        same = sorted(same, key=lambda p: p["speed"])
        if len(same) > 1:
            ax.plot([p["speed"] for p in same], [p["score"] for p in same], color="0.75", lw=0.8, zorder=2)
        ax.annotate(label, (same[-1]["speed"], same[-1]["score"]), textcoords="offset points", xytext=(6, -3),
                    fontsize="x-small")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(_plain_number_formatter())
    ax.xaxis.set_minor_formatter(_plain_number_formatter(minor=True))
    ax.set_xlim(right=ax.get_xlim()[1] * 2.5)  # room for the labels of the fastest points
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    if any(groups):
        ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    figure.tight_layout()
    return _save_png(figure, Path(path))
