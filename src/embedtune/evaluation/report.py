"""Results of an STS evaluation as versioned JSON, paper-style markdown tables, run comparisons and plots.

``results.json`` is the contract between ``embedtune eval``, ``embedtune compare``, the trainer and the
demo: :data:`RESULTS_SCHEMA_VERSION` changes whenever a reader would misread an older file, and
:func:`load_results` refuses any other version with a clear message.

Layout of a payload (schema 1)::

    {"schema_version": 1, "main_metric": "cosine_spearman", "task_order": [...],
     "tasks": {name: {pairs, unique_sentences, seconds, cosine_spearman, ...}},
     "mean": float, "std": float, "std_ddof": 0,
     "eval_seconds": float, "wall_seconds": float, "sentences": int, "sentences_per_second": float,
     "meta": {model, adapter, run, pooling, prompt, max_length, dtype, variant, embedtune_version,
              git_commit, machine, date, ...}}
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..io import write_text_atomic
from ..provenance import (
    environment_meta,
)
from .plots import plot_bars
from .sts import StsScores

RESULTS_SCHEMA_VERSION = 1
"""Version of the ``results.json`` layout; bump it when a field changes meaning or disappears."""

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
MAIN_METRIC = "cosine_spearman"
METRICS = ("cosine_spearman", "cosine_pearson", "manhattan_spearman", "manhattan_pearson",
           "euclidean_spearman", "euclidean_pearson")
MEAN_ROW = "mean ± std"


class ResultsError(ValueError):
    """A results file is missing, unreadable, of another schema version, or incompatible with another."""


# ---- building a payload ---------------------------------------------------------------------------------
def embedder_meta(embedder: Any, **extra: Any) -> dict[str, Any]:
    """Meta fields describing an :class:`~embedtune.Embedder` (model, pooling, prompt, max_length, dtype).

    Args:
        embedder: the evaluated embedder.
        extra: more fields (``adapter``, ``run``, ``variant`` …); they override the derived ones.
    """
    source = getattr(embedder, "source", None)
    try:
        dtype = str(next(embedder.backbone.parameters()).dtype).replace("torch.", "")
    except (AttributeError, StopIteration):
        dtype = None
    meta = {
        "model": source.spec if source is not None else None,
        "source_kind": getattr(source, "kind", None),  # default, gguf, local, hub, or sentence-transformers
        "adapter": None,
        "run": None,
        "pooling": getattr(embedder, "pooling", None),
        "prompt": getattr(embedder, "prompt", None),
        "max_length": getattr(embedder, "max_length", None),
        "num_layers": getattr(embedder, "num_layers", None),
        "dtype": dtype,
        "autocast": getattr(embedder, "autocast", None),
    }
    meta.update(extra)
    return meta


def _finite(x: float) -> float | None:
    # JSON has no NaN; a constant-similarity run (e.g. a collapsed model) gives NaN correlations.
    return None if x is None or not math.isfinite(x) else round(float(x), 6)


def results_payload(scores: list[StsScores], meta: dict, *, wall_seconds: float | None = None) -> dict:
    """Build the ``results.json`` payload of one evaluation.

    Args:
        scores: per-benchmark results from :func:`~embedtune.evaluation.sts.evaluate_sts`, in table order.
        meta: what was evaluated (see :func:`embedder_meta`); version, commit, machine and date are
            added unless present.
        wall_seconds: end-to-end time (e.g. including model loading); default: the summed task times.

    Returns:
        A JSON-serializable dict (layout in the module docstring). ``std`` is the population standard
        deviation (ddof 0) of the main score over the benchmarks.
    """
    if not scores:
        raise ValueError("results_payload needs at least one benchmark score")
    names = [s.task for s in scores]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate benchmark in scores: {names}")
    main = np.array([s.main_score for s in scores], dtype=np.float64)
    eval_seconds = float(sum(s.seconds for s in scores))
    sentences = int(sum(s.unique_sentences for s in scores))
    full_meta = {**environment_meta(), **meta}
    return {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "main_metric": MAIN_METRIC,
        "task_order": names,
        "tasks": {
            s.task: {
                "pairs": s.pairs,
                "unique_sentences": s.unique_sentences,
                "seconds": round(s.seconds, 3),
                **{m: _finite(getattr(s, m)) for m in METRICS},
            }
            for s in scores
        },
        "mean": _finite(float(main.mean())),
        "std": _finite(float(main.std(ddof=0))),
        "std_ddof": 0,
        "eval_seconds": round(eval_seconds, 3),
        "wall_seconds": round(float(wall_seconds if wall_seconds is not None else eval_seconds), 3),
        "sentences": sentences,
        "sentences_per_second": round(sentences / eval_seconds, 2) if eval_seconds > 0 else None,
        "meta": full_meta,
    }


# ---- reading and writing ----------------------------------------------------------------------------------
def write_results(out_dir: str | Path, payload: dict) -> Path:
    """Write ``results.json`` and ``results.md`` into ``out_dir`` (each atomically); return the JSON path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    label = payload.get("meta", {}).get("label") or _default_label(payload)
    md = f"# STS results: {label}\n\n" + markdown_table({label: payload}) + "\n\n" + _meta_markdown(payload) + "\n"
    write_text_atomic(out / RESULTS_MD, md)
    return write_text_atomic(out / RESULTS_JSON, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


def load_results(path_or_dir: str | Path) -> dict:
    """Read a ``results.json`` (or the one inside a folder), checking its schema version.

    Raises:
        ResultsError: the file is missing, not JSON, not an embedtune results file, or of another schema
            version (the message says which version was found and which is supported).
    """
    path = Path(path_or_dir)
    if path.is_dir():
        path = path / RESULTS_JSON
    if not path.is_file():
        raise ResultsError(f"{path}: no such results file (give an `embedtune eval` output folder or its results.json)")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(payload, dict) or "schema_version" not in payload:
        raise ResultsError(f"{path}: not an embedtune results file (no 'schema_version' field)")
    version = payload["schema_version"]
    if version != RESULTS_SCHEMA_VERSION:
        raise ResultsError(
            f"{path}: results schema_version {version!r} is not supported by this embedtune "
            f"(it reads version {RESULTS_SCHEMA_VERSION}); re-run `embedtune eval` with this version"
        )
    missing = {"tasks", "task_order", "mean", "std", "meta"} - set(payload)
    if missing:
        raise ResultsError(f"{path}: results file lacks field(s) {', '.join(sorted(missing))}")
    return payload


# ---- tables -----------------------------------------------------------------------------------------------
def _default_label(payload: dict) -> str:
    meta = payload.get("meta", {})
    for key in ("label", "run", "adapter", "model"):
        if meta.get(key):
            return Path(str(meta[key])).name or str(meta[key])
    return "run"


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def _task_union(payloads: dict[str, dict]) -> list[str]:
    order: list[str] = []
    for p in payloads.values():
        order.extend(t for t in p["task_order"] if t not in order)
    return order


def markdown_table(payloads: dict[str, dict], metric: str = MAIN_METRIC) -> str:
    """The paper's table: one row per benchmark plus ``mean ± std``, one column per run.

    With exactly two runs a ``Δ`` column (second minus first) is added. A benchmark a run lacks shows ``–``.

    Args:
        payloads: label -> payload (as from :func:`results_payload` or :func:`load_results`), in column order.
        metric: which correlation to show (default: cosine Spearman x100, the paper's).
    """
    if not payloads:
        raise ValueError("markdown_table needs at least one run")
    labels = list(payloads)
    delta = len(labels) == 2
    header = ["Benchmark", *labels] + (["Δ"] if delta else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for task in _task_union(payloads):
        vals = [payloads[k]["tasks"].get(task, {}).get(metric) for k in labels]
        cells = [_fmt(v) for v in vals]
        if delta:
            cells.append("–" if None in vals else f"{vals[1] - vals[0]:+.2f}")
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    stats = [_mean_std(payloads[k], metric) for k in labels]
    cells = ["–" if m is None else f"{m:.2f} ± {s:.2f}" for m, s in stats]
    if delta:
        cells.append("–" if stats[0][0] is None or stats[1][0] is None else f"{stats[1][0] - stats[0][0]:+.2f}")
    lines.append(f"| {MEAN_ROW} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mean_std(payload: dict, metric: str) -> tuple[float | None, float | None]:
    if metric == payload.get("main_metric", MAIN_METRIC) and payload.get("mean") is not None:
        return payload["mean"], payload["std"]
    vals = [payload["tasks"][t].get(metric) for t in payload["task_order"]]
    if not vals or any(v is None for v in vals):
        return None, None
    return float(np.mean(vals)), float(np.std(vals))


def _meta_markdown(payload: dict) -> str:
    meta = payload.get("meta", {})
    machine = meta.get("machine") or {}
    rows = [
        ("model", meta.get("model")), ("adapter", meta.get("adapter")), ("run", meta.get("run")),
        ("pooling", meta.get("pooling")), ("prompt", repr(meta.get("prompt"))), ("max_length", meta.get("max_length")),
        ("dtype", meta.get("dtype")), ("variant", meta.get("variant")),
        ("wall time", f"{payload.get('wall_seconds')} s (encoding + scoring {payload.get('eval_seconds')} s)"),
        ("sentences", f"{payload.get('sentences')} unique, {payload.get('sentences_per_second')} sentences/s"),
        ("embedtune", f"{meta.get('embedtune_version')} (commit {meta.get('git_commit')})"),
        ("machine", f"{machine.get('processor')}, {machine.get('cpu_count')} CPUs, torch {machine.get('torch')}"),
        ("date", meta.get("date")),
    ]
    return "\n".join(f"- {k}: {v}" for k, v in rows if v not in (None, "None"))


# ---- comparing runs ---------------------------------------------------------------------------------------
def check_same_tasks(payloads: dict[str, dict]) -> list[str]:
    """The common benchmark list of all runs.

    Raises:
        ResultsError: the runs were evaluated on different benchmarks (the message names the difference).
    """
    labels = list(payloads)
    ref = labels[0]
    ref_tasks = set(payloads[ref]["task_order"])
    problems = []
    for label in labels[1:]:
        tasks = set(payloads[label]["task_order"])
        if tasks != ref_tasks:
            lacks = [t for t in payloads[ref]["task_order"] if t not in tasks]
            extra = [t for t in payloads[label]["task_order"] if t not in ref_tasks]
            parts = [f"lacks {', '.join(lacks)}"] if lacks else []
            parts += [f"has extra {', '.join(extra)}"] if extra else []
            problems.append(f"run {label!r} {' and '.join(parts)} (compared with {ref!r})")
    if problems:
        raise ResultsError("cannot compare runs evaluated on different benchmarks: " + "; ".join(problems)
                           + ". Re-run `embedtune eval` with the same --tasks")
    return list(payloads[ref]["task_order"])


def compare(payloads: dict[str, dict], out_dir: str | Path, metric: str = MAIN_METRIC) -> tuple[str, Path]:
    """Compare runs: a markdown table (``comparison.md``) and a grouped bar chart (``comparison.png``).

    Args:
        payloads: label -> payload, in column order (the first is the baseline of the Δ column).
        out_dir: folder for ``comparison.md`` and ``comparison.png``.
        metric: correlation to compare (default cosine Spearman).

    Returns:
        The markdown and the PNG path.

    Raises:
        ResultsError: the runs have different benchmark sets.
        ImportError: matplotlib is missing (install the ``plot`` extra).
    """
    if len(payloads) < 1:
        raise ValueError("compare needs at least one run")
    tasks = check_same_tasks(payloads)
    md = markdown_table(payloads, metric)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "comparison.md", f"# STS comparison ({metric}, x100)\n\n{md}\n")
    series = {label: [payload["tasks"][t].get(metric) for t in tasks] + [_mean_std(payload, metric)[0]]
              for label, payload in payloads.items()}
    png = plot_bars([*tasks, "mean"], series, out / "comparison.png", ylabel=f"{metric.replace('_', ' ')} x100",
                    title="STS benchmarks")
    return md, png
