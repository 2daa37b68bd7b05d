"""Benchmark: validate a synthetic 275k-row triplet file (the size of SimCSE's nli_for_simcse.csv).

Measures, each in a fresh process so memory numbers are not polluted by earlier steps:
  * streaming validation (``embedtune.data.triplets.validate``): time and peak extra memory (VmHWM minus the
    resident size right before it started), targets < 10 s and < 500 MB;
  * the same for the gzipped file;
  * a full load into memory (``read_examples``) and decontamination against the nine benchmarks, for reference.
Writes the numbers into the ``## Data validation`` section of docs/benchmarks.md (other sections untouched).

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/validate_triplets.py [--rows 275601] [--no-write]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "## Data validation"
WORDS = ("a an the man woman child dog cat people group two three is are was sits runs plays eating riding "
         "playing standing walking near in on at with of and park street beach guitar ball red blue young old "
         "small large outside inside while his her their water snow field crowd bike horse car stage").split()

CHILD = r"""
import json, sys, time
from embedtune.data import decontaminate, triplets

def rss(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
mode, path = sys.argv[1], sys.argv[2]
before = rss("VmRSS:")
t = time.perf_counter()
if mode == "validate":
    rep = triplets.validate(path)
    rows = rep.rows
elif mode == "load":
    ex, rep = triplets.read_examples(path)
    rows = len(ex)
else:  # decontaminate (index build included)
    ex, rep = triplets.read_examples(path)
    t = time.perf_counter()
    kept, drep = decontaminate.decontaminate(ex, decontaminate.sts_sentence_index())
    rows = drep.rows_in
seconds = time.perf_counter() - t
print(json.dumps({"rows": rows, "seconds": seconds, "extra_mb": (rss("VmHWM:") - before) / 2**20,
                  "duplicates": rep.duplicates if mode != "decontaminate" else None}))
"""


def sentence(rng: random.Random, lo: int, hi: int) -> str:
    words = rng.choices(WORDS, k=rng.randint(lo, hi))
    text = " ".join(words).capitalize()
    if rng.random() < 0.2:  # commas and quotes exercise CSV quoting
        text = text.replace(" ", ", ", 1)
    if rng.random() < 0.05:
        text = f'"{text}," he said'
    return text + "."


def make_file(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["sent0", "sent1", "hard_neg"])
        for _ in range(rows):
            w.writerow([sentence(rng, 6, 30), sentence(rng, 3, 14), sentence(rng, 3, 14)])


def run_child(mode: str, path: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(path)], capture_output=True, text=True, env=env,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def update_doc(body: str) -> None:
    text = DOC.read_text(encoding="utf-8") if DOC.exists() else (
        "# Benchmarks\n\nSpeed and memory of embedtune's parts; each section is written by its script in "
        "`benchmarks/`.\n")
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    section = f"{SECTION}\n\n{body.strip()}\n\n"
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    DOC.parent.mkdir(parents=True, exist_ok=True)
    tmp = DOC.with_name(f".{DOC.name}.tmp")
    tmp.write_text(text.rstrip("\n") + "\n", encoding="utf-8")
    os.replace(tmp, DOC)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=275_601, help="rows of the synthetic file (SimCSE's: 275,601)")
    p.add_argument("--repeat", type=int, default=3, help="timing runs of the validation (best is reported)")
    p.add_argument("--no-write", action="store_true", help="print only; do not update docs/benchmarks.md")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        plain, packed = Path(tmp) / "synthetic.csv", Path(tmp) / "synthetic.csv.gz"
        t = time.perf_counter()
        make_file(plain, args.rows)
        make_file(packed, args.rows)
        print(f"generated {args.rows} rows in {time.perf_counter() - t:.1f} s "
              f"({plain.stat().st_size / 2**20:.1f} MB csv, {packed.stat().st_size / 2**20:.1f} MB gz)")
        results = {}
        for label, mode, path in [("validate .csv", "validate", plain), ("validate .csv.gz", "validate", packed),
                                  ("load into memory (.csv)", "load", plain),
                                  ("decontaminate (9 benchmarks, index included)", "decontaminate", plain)]:
            runs = [run_child(mode, path) for _ in range(args.repeat if mode == "validate" else 1)]
            best = min(runs, key=lambda r: r["seconds"])
            best["extra_mb"] = max(r["extra_mb"] for r in runs)
            results[label] = best
            print(f"{label:<48} {best['seconds']:6.2f} s  {best['extra_mb']:7.1f} MB extra  ({best['rows']} rows)")
        size_mb = plain.stat().st_size / 2**20
    v = results["validate .csv"]
    ok = v["seconds"] < 10 and v["extra_mb"] < 500
    print("targets (< 10 s, < 500 MB):", "met" if ok else "NOT met")
    rows = "\n".join(f"| {k} | {r['seconds']:.2f} | {r['extra_mb']:.0f} |" for k, r in results.items())
    body = f"""
Validating a synthetic {args.rows:,}-row triplet file (`sent0,sent1,hard_neg`, {size_mb:.0f} MB of CSV; the size
of SimCSE's `nli_for_simcse.csv`): streaming parse, every check of `embedtune data check`, exact-duplicate count.
Target: under 10 s and under 500 MB of extra memory — **{"met" if ok else "not met"}**.

| step | seconds | extra memory (MB) |
|---|---:|---:|
{rows}

Extra memory is the process's peak resident size minus its size just before the step (Python, torch-free
imports). Time is the best of {args.repeat} runs for validation, one run otherwise, each in a fresh process.
Machine: {cpu_name()}, {os.cpu_count()} CPU cores (1-min load average {os.getloadavg()[0]:.1f}), \
Python {platform.python_version()}.
Command: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/validate_triplets.py`
"""
    if not args.no_write:
        update_doc(body)
        print(f"updated {DOC.relative_to(ROOT)} ({SECTION})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
