"""The report of an experiment: the main table, one table per ablated factor (the paper's lr, prompt, hard
negatives and pooling, or any recipe key), the score-vs-step curve, as markdown and PNG, and one JSON with
everything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .evaluation.plots import plot_curve
from .evaluation.report import MAIN_METRIC, compare, markdown_table
from .io import write_text_atomic

FACTOR_TITLES = {"train.lr": "Learning rate", "model.prompt": "Prompt", "data.hard_negatives": "Hard negatives",
                 "model.pooling": "Pooling"}


def _label(cell: dict[str, Any], key: str) -> str:
    value = cell["settings"][key]
    if key == "model.prompt":
        return f"prompt {value or 'none'}"
    if key == "data.hard_negatives":
        return "with hard negatives" if value else "without hard negatives"
    name = key.rsplit(".", 1)[-1]
    if value is None:
        value = "recipe default"
    if isinstance(value, list):
        value = ",".join(map(str, value))
    return f"{name} {value:g}" if isinstance(value, float) else f"{name} {value}"


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
        payloads = {**({"base": r["base"]} if r["base"] else {}), "fine-tuned (final)": r["final"]}
        if "best" in r:
            payloads["fine-tuned (best dev)"] = r["best"]
        md, _ = compare(payloads, out / f"main__{cell.base_key}")
        parts += [f"## Main table: {cell.model} (reference cell `{cell.name}`)\n", md, "",
                  f"![main](main__{cell.base_key}/comparison.png)\n"]

    # One-factor ablations, each against the reference cell of its model.
    for key in spec.factors():
        title = FACTOR_TITLES.get(key, key)
        for model in dict.fromkeys(c.model for c in cells):
            group = [c for c in cells if c.model == model and c.varied in ("reference", key) and c.name in by_name]
            if len(group) < 2 or not any(c.varied == key for c in group):
                continue
            payloads = {_label(by_name[c.name]["cell"], key): by_name[c.name]["final"] for c in group}
            folder = f"ablation_{key.rsplit('.', 1)[-1]}__{group[0].model_key}"
            md, _ = compare(payloads, out / folder)
            parts += [f"## {title} ablation: {model}\n", md, "", f"![{key}]({folder}/comparison.png)\n"]

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
