"""Quality against encoding speed: evaluated models' nine-STS means against their sentences/s, in one run.

Each ``LABEL=RESULTS`` names an ``embedtune eval`` output (a folder holding results.json, or the file).
The model it describes is rebuilt as it would be shipped and timed encoding the STSBenchmark test
sentences (2,758, every one encoded), with float32 and with bfloat16 weights, all in this one process,
best of ``--repeats`` after a warm-up:

* an embedtune run (``meta.run``): loaded with its adapter, which is then merged into the weights (what
  ``embedtune export --merge`` ships), at the run's depth, prompt and max length;
* an untrained embedtune model (no run): the base model with the recorded prompt, depth and max length;
* a peer (``meta.source_kind == "sentence-transformers"``, e.g. all-MiniLM-L6-v2): through
  sentence-transformers itself.

The quality axis is the mean recorded in each results.json (its evaluation precision is in the table);
speed is measured here. Writes the ``## Quality against speed`` section of docs/benchmarks.md and
docs/img/tradeoff.png; prints the table and each model's speed relative to the first peer.

Usage: ``python benchmarks/tradeoff.py LABEL=RESULTS [LABEL=RESULTS ...] [--repeats 1] [--batch-size 64]
[--no-write]``
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
PNG = ROOT / "docs" / "img" / "tradeoff.png"
SECTION = "## Quality against speed"
DTYPES = ("float32", "bfloat16")


def build_encoder(meta: dict, dtype: str):
    """The encoder a results.json describes, as shipped (adapter merged), with ``dtype`` weights."""
    from embedtune.models.embedder import Embedder
    from embedtune.models.peer import PeerEncoder

    if meta.get("source_kind") == "sentence-transformers":
        return PeerEncoder(meta["model"], device="cpu", dtype=dtype)
    if meta.get("run"):
        from embedtune.export import merged_backbone

        emb = Embedder.load(meta["run"], device="cpu", dtype=dtype)
        emb.backbone = merged_backbone(emb, in_place=True)
        return emb
    return Embedder.from_pretrained(meta["model"], device="cpu", dtype=dtype, prompt=meta.get("prompt"),
                                    num_layers=meta.get("num_layers"), max_length=meta.get("max_length") or 128,
                                    pooling=meta.get("pooling") or "last")


def run_folder(recorded: str, results: Path) -> str:
    """The run a results.json evaluated: the recorded folder, or, when that was renamed since (an experiment
    cell's folder name follows the spec), the ``run`` folder beside the evaluation folder."""
    if (Path(recorded) / "embedtune.json").is_file():
        return recorded
    folder = results.parent if results.suffix == ".json" else results
    beside = folder.parent / "run"
    if (beside / "embedtune.json").is_file():
        print(f"{results}: the recorded run {recorded} is gone; using {beside} beside it", flush=True)
        return str(beside)
    raise SystemExit(f"{results}: meta.run {recorded} holds no embedtune.json, nor does {beside}")


def time_encoder(encoder, texts: list[str], batch_size: int, repeats: int) -> float:
    """Best sentences/s of ``repeats`` full passes after a warm-up."""
    encoder.encode(texts[:64], batch_size=batch_size)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        encoder.encode(texts, batch_size=batch_size)
        best = min(best, time.perf_counter() - start)
    return len(texts) / best


def measure(candidates: list[tuple[str, dict]], texts: list[str], args) -> list[dict]:
    rows = []
    for label, payload in candidates:
        meta = payload["meta"]
        for dtype in DTYPES:
            encoder = build_encoder(meta, dtype)
            speed = time_encoder(encoder, texts, args.batch_size, args.repeats)
            peer = meta.get("source_kind") == "sentence-transformers"
            rows.append({"label": label, "dtype": dtype, "speed": speed, "score": payload["mean"],
                         "biosses": payload["tasks"].get("BIOSSES", {}).get("cosine_spearman"),
                         "eval_autocast": meta.get("autocast"), "peer": peer,
                         "layers": getattr(encoder, "num_layers", None), "prompt": meta.get("prompt")})
            print(f"{label} {dtype}: {speed:.1f} sentences/s, mean {payload['mean']:.2f}", flush=True)
            del encoder
    return rows


def table(rows: list[dict]) -> str:
    peers = {r["dtype"]: r["speed"] for r in rows if r["peer"]}
    lines = ["| model | weights | layers | prompt | nine-STS mean (eval precision) | BIOSSES | sentences/s | "
             "x the peer's speed |", "|---|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        rel = f"{r['speed'] / peers[r['dtype']]:.2f}x" if r["dtype"] in peers else "–"
        bio = "–" if r["biosses"] is None else f"{r['biosses']:.2f}"
        lines.append(f"| {r['label']} | {r['dtype']} | {r['layers'] or '–'} | {r['prompt'] or 'none'} | "
                     f"{r['score']:.2f} ({r['eval_autocast'] or 'fp32'}) | {bio} | {r['speed']:.1f} | {rel} |")
    return "\n".join(lines)


def cpu_steal_ticks(stat: Path = Path("/proc/stat")) -> tuple[int, int] | None:
    """(stolen, total) CPU ticks since boot from /proc/stat, or None off Linux. On a virtual machine, "steal"
    is time the host gave to others: a share of it during the timings makes them slower than the model."""
    try:
        fields = [int(x) for x in stat.read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def machine_line(processor: str | None, steal: str) -> str:
    """The section's machine line: cores, the load at the end (the benchmark's own threads count about one per
    core; only a load above that means other work shared the cores) and the host's steal during the run."""
    cores, load = os.cpu_count() or 1, os.getloadavg()[0]
    shared = ("above the core count: other work shared the cores" if load > cores + 0.5
              else "about the benchmark's own threads")
    return (f"- Machine: {processor}, {cores} CPU cores, 1-min load average {load:.1f} at the end ({shared})"
            f"{steal}.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("candidates", nargs="+", metavar="LABEL=RESULTS")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    args = parser.parse_args(argv)

    from embedtune.data.sts import load_sts
    from embedtune.evaluation.plots import plot_tradeoff
    from embedtune.evaluation.report import load_results

    candidates = []
    for item in args.candidates:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            parser.error(f"{item!r}: expected LABEL=RESULTS (an `embedtune eval` output folder or results.json)")
        payload = load_results(path)
        if payload["meta"].get("run"):
            payload["meta"]["run"] = run_folder(payload["meta"]["run"], Path(path))
        candidates.append((label, payload))
    data = load_sts("STSBenchmark", args.data_dir)
    texts = data.sentences1 + data.sentences2
    before = cpu_steal_ticks()
    rows = measure(candidates, texts, args)
    after = cpu_steal_ticks()
    steal = ""
    if before and after and after[1] > before[1]:
        share = (after[0] - before[0]) / (after[1] - before[1])
        steal = f"; CPU time stolen by the host during the timings: {share:.0%}"
        print(f"host steal during the timings: {share:.1%}")
    md = table(rows)
    print(md)
    if args.no_write:
        return 0
    points = [{"label": r["label"], "speed": r["speed"], "score": r["score"],
               "group": f"{'peer' if r['peer'] else 'embedtune'}, {r['dtype']} weights"} for r in rows]
    plot_tradeoff(points, PNG, xlabel="sentences/s encoding STSBenchmark test (log scale)",
                  ylabel="mean Spearman x100, nine STS benchmarks")
    write_section(md, args, steal)
    return 0


def write_section(md: str, args, steal: str = "") -> None:
    from doc_sections import splice

    from embedtune.provenance import git_commit, machine_info

    machine = machine_info()
    command = " ".join(["benchmarks/tradeoff.py", *map(shlex.quote, args.candidates), f"--batch-size {args.batch_size}",
                        f"--repeats {args.repeats}"])
    section = "\n".join([
        SECTION, "",
        "Nine-STS mean (from each model's results.json) against encoding speed (measured here, one process,",
        "STSBenchmark test sentences, every one encoded, best of the repeats after a warm-up). Our runs are",
        "timed with the adapter merged, as `embedtune export --merge` ships them.", "",
        md, "", f"![quality against speed](img/{PNG.name})", "",
        f"- Command: `.venv/bin/python {command}`; commit {git_commit(ROOT)}.",
        machine_line(machine.get("processor"), steal), ""])
    splice(DOC, SECTION, section)
    print(f"updated {DOC} ({SECTION}) and {PNG}")


if __name__ == "__main__":
    sys.exit(main())
