"""The report of an experiment: the paper's tables (main, lr, prompt, hard negatives, pooling), the
score-vs-step curve, as markdown and PNG, and one JSON with everything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .evaluation.report import MAIN_METRIC, compare, markdown_table, plot_curve
from .io import write_text_atomic

ABLATION_TITLES = {"lr": "Learning rate", "prompt": "Prompt", "hard_negatives": "Hard negatives",
                   "pooling": "Pooling"}


def _label(cell: dict[str, Any], factor: str) -> str:
    value = cell[factor]
    if factor == "prompt":
        return f"prompt {value or 'none'}"
    if factor == "hard_negatives":
        return "with hard negatives" if value else "without hard negatives"
    return f"{factor} {value:g}" if isinstance(value, float) else f"{factor} {value}"


def write_report(spec, cells, records: list[dict[str, Any]], out: Path) -> Path:
    """Write ``report/`` (README.md, *.png, experiment.json) from the finished cells' records."""
    out.mkdir(parents=True, exist_ok=True)
    by_name = {r["name"]: r for r in records}
    parts = [f"# Experiment {spec.name}\n", f"Cells finished: {len(records)} of {len(cells)}.\n"]

    # Main table: base vs fine-tuned for each model's reference cell.
    for cell in cells:
        if cell.varied != "reference" or cell.name not in by_name:
            continue
        r = by_name[cell.name]
        payloads = {"base": r["base"], "fine-tuned (final)": r["final"]}
        if "best" in r:
            payloads["fine-tuned (best dev)"] = r["best"]
        md, _ = compare(payloads, out / f"main__{cell.base_key}")
        parts += [f"## Main table: {cell.model} (reference cell `{cell.name}`)\n", md, "",
                  f"![main](main__{cell.base_key}/comparison.png)\n"]

    # One-factor ablations, each against the reference cell of its model.
    for factor, title in ABLATION_TITLES.items():
        for model in spec.models:
            group = [c for c in cells if c.model == model and c.varied in ("reference", factor)
                     and c.name in by_name]
            if len(group) < 2 or not any(c.varied == factor for c in group):
                continue
            payloads = {_label(by_name[c.name]["cell"], factor): by_name[c.name]["final"] for c in group}
            folder = f"ablation_{factor}__{group[0].model_key}"
            md, _ = compare(payloads, out / folder)
            parts += [f"## {title} ablation: {model}\n", md, "", f"![{factor}]({folder}/comparison.png)\n"]

    if spec.grid and len(records) > 1:
        payloads = {r["name"]: r["final"] for r in records}
        parts += ["## Grid\n", markdown_table(payloads), ""]

    # Score vs step (the paper's training-efficiency figure), one line per cell.
    points = [{**p, "task": r["name"]} for r in records for p in r.get("curve", [])]
    if points:
        plot_curve(points, out / "curve.png", MAIN_METRIC)
        parts += ["## Dev score vs step\n", "![curve](curve.png)\n"]

    parts += ["## Cells\n", "| cell | steps | train min | final mean | best dev step |", "|---|---|---|---|---|"]
    for r in records:
        t = r["train"]
        parts.append(f"| `{r['name']}` | {t.get('steps')} | {t.get('seconds_this_call', 0) / 60:.1f} | "
                     f"{r['final']['mean']:.2f} ± {r['final']['std']:.2f} | {t.get('best_step')} |")
    write_text_atomic(out / "README.md", "\n".join(parts) + "\n")
    write_text_atomic(out / "experiment.json", json.dumps({"name": spec.name, "cells": records}, indent=2,
                                                          default=str) + "\n")
    return out
