"""The markdown section that benchmarks/gpu_check.py writes (the "## GPU check" of docs/benchmarks.md)."""

from __future__ import annotations

from typing import Any

from doc_sections import splice  # noqa: F401  (gpu_check.py splices through here)

TITLES = {"a": "(a) Smoke on the device", "b": "(b) The default recipe end to end",
          "c": "(c) The paper's model shapes (random weights)", "d": "(d) torchrun: gathered loss == one process"}


def _num(x: float | None, fmt: str = ".2f", none: str = "-") -> str:
    return none if x is None else format(x, fmt)


def header(meta: dict[str, Any]) -> list[str]:
    """Command, machine, versions and total time; a --tiny run says that it measured nothing."""
    lines = []
    if meta["tiny"]:
        lines += ["**A `--tiny` run: tiny models, a few steps, on " + meta["device"] + ". It checks that the code "
                  "runs; none of its numbers measures anything.**", ""]
    lines += [f"Command: `{meta['command']}`; device: {meta['device_name']}; torch {meta['torch']} "
              f"(CUDA {meta['cuda'] or 'none'}), transformers {meta['transformers']}, Python {meta['python']}; "
              f"commit {meta['commit']}; {meta['date']}; {meta['total_s'] / 60:.1f} min in all.", ""]
    return lines


def part_heading(key: str, part: dict[str, Any]) -> list[str]:
    status = part["status"]
    line = f"### {TITLES[key]}: {status} ({part['seconds']:.0f} s)"
    if status == "skipped":
        return [line, "", f"Skipped: {part['reason']}", ""]
    if "error" in part:
        return [line, "", f"Failed: `{part['error'][:400]}`", ""]
    return [line, ""]


def smoke(part: dict[str, Any]) -> list[str]:
    rows = [f"Model: {part['model']}.", "", "| step | result | detail |", "|---|---|---|"]
    rows += [f"| {s['step']} | {s['result']} | {s['detail'].replace('|', '/')} |" for s in part["steps"]]
    return rows + [""]


def recipe(part: dict[str, Any], cpu: dict[str, float], device: str) -> list[str]:
    lines = [f"`configs/default-cpu.yaml` with {', '.join(f'`{o}`' for o in part['overrides'])}: "
             f"{part['steps']} steps of {part['batch']} triplets in {part['loop_s']:.1f} s "
             f"({part['steps_per_s']:.2f} steps/s, {part['triplets_per_s']:.0f} triplets/s, dev evaluations "
             f"included); {part['wall_s']:.1f} s with data preparation and model loading; the nine benchmarks "
             f"in {part['eval_s']:.1f} s (float32 weights, bf16 autocast, batch 64, as the CPU run).", "",
             f"| Benchmark | this run ({device}) | CPU (docs/results.md) | difference |", "|---|---:|---:|---:|"]
    for task, score in part["scores"].items():
        ref = cpu.get(task)
        lines.append(f"| {task} | {score:.2f} | {_num(ref)} | {_num(None if ref is None else score - ref, '+.2f')} |")
    lines.append(f"| **mean** | **{part['mean']:.2f}** | {part['cpu_mean']:.2f} | "
                 f"{part['mean'] - part['cpu_mean']:+.2f} |")
    if part["agrees"] is not None:
        verdict = "agrees with" if part["agrees"] else "DIFFERS from"
        lines += ["", f"This run's mean {verdict} the CPU mean (threshold {part['threshold']} points; one seed each, "
                      "the same LoRA initialization and data order)."]
    return lines + [""]


def _case_row(model: str, case: dict[str, Any], base: dict[str, Any] | None) -> str:
    if "error" in case:
        return f"| {model} | {case['case']} | {case['batch']} | {case['error']} | - | - |"
    versus = "-"
    if base is not None and "error" not in base and case is not base:
        versus = f"{case['triplets_per_s'] / base['triplets_per_s']:.2f}x the speed"
        if case.get("peak_gib") and base.get("peak_gib"):
            versus += f", {case['peak_gib'] / base['peak_gib']:.2f}x the memory"
    return (f"| {model} | {case['case']} | {case['batch']} | {case['triplets_per_s']:.1f} | "
            f"{_num(case.get('peak_gib'), '.1f', 'n/a')} | {versus} |")


def shapes(part: dict[str, Any]) -> list[str]:
    lines = [f"LoRA r=8 on q,v (dropout 0.1), bf16 weights and autocast, sdpa attention, max length "
             f"{part['max_length']}; one warm-up step, then {part['steps']} timed; SNLI triplets through the "
             f"{part['tokenizer']}. Peak memory is torch's peak allocation over the timed steps (weights included).",
             "", "| model (parameters) | step | triplets | triplets/s | peak GiB | against the paper protocol at "
             f"{part['batch']} |", "|---|---|---:|---:|---:|---|"]
    for m in part["models"]:
        if "error" in m:
            lines.append(f"| {m['model']} | failed: {m['error']} | | | | |")
            continue
        n = m["parameters"]
        label = f"{m['model']} ({n / 1e9:.2f} B)" if n >= 1e8 else f"{m['model']} ({n / 1e6:.2f} M)"
        base = next((c for c in m["cases"] if c["case"] == "paper protocol" and c["batch"] == part["batch"]), None)
        lines += [_case_row(label, c, base) for c in m["cases"]]
    return lines + [""]


def distributed(part: dict[str, Any]) -> list[str]:
    lines = [f"`{part['command']}`, backend {part['backend']}.", "",
             "| rank | case | gathered loss | one-process loss | max gradient difference | equal |",
             "|---:|---|---:|---:|---:|---|"]
    for r in part["ranks"]:
        for name, c in r["cases"].items():
            lines.append(f"| {r['rank']} of {r['world_size']} | {name} | {c['loss']:.6f} | "
                         f"{c['single_process_loss']:.6f} | {c['max_grad_diff']:.1e} (largest {c['max_grad']:.1e}) | "
                         f"{'yes' if c['equal'] else 'NO'} |")
    return lines + [""]


def render(report: dict[str, Any], section: str, cpu: dict[str, float]) -> str:
    """The whole section as markdown."""
    lines = [section, "", *header(report["meta"])]
    body = {"a": smoke, "b": lambda p: recipe(p, cpu, report["meta"]["device"]), "c": shapes, "d": distributed}
    for key, part in report["parts"].items():
        lines += part_heading(key, part)
        if part["status"] != "skipped" and "error" not in part:
            lines += body[key](part)
    return "\n".join(lines).rstrip() + "\n"
