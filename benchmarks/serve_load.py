"""Load test of ``embedtune serve``: N requests at concurrency C on loopback, against ``Embedder.encode``.

Starts the server (packaged default model) as a subprocess on 127.0.0.1, sends one short STS sentence
per request from C concurrent clients until N requests are done, and reports errors, p50/p99 latency
and throughput. ``Embedder.encode`` on the same texts is timed in this process before and after the
server runs (never at the same time; the machine's speed drifts, so the ratio uses the mean of the two).
Last, the server's batches are replayed in this process without HTTP (groups of the server's mean batch
size in request order, embedded as the server embeds them, ``MicroBatcher.embed_batch``): that splits the gap to
``encode`` into what batching costs and what serving over HTTP costs. Writes the ``## Serving`` section
of docs/benchmarks.md.

Then, on the same server, the hostile and heavy traffic of issue 16 (``--scenarios``, all by default; see
``serve_traffic.py``): the same good requests mixed with 1% bad and 0.1% oversized ones, a 30 MB body
uploaded while small requests are timed (also against a second server whose ``--max-request-bytes`` lets
it in), and a burst of 5x the clean run's rate. Writes the ``## Serving under hostile and heavy traffic``
section.

    .venv/bin/python benchmarks/serve_load.py                                         # 10,000 x 32
    .venv/bin/python benchmarks/serve_load.py --requests 200 --no-docs                # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from doc_sections import splice
from serve_traffic import good_payload, run_jobs

ROOT = Path(__file__).resolve().parents[1]
STS = ROOT.parent / "shared" / "data" / "sts" / "STSBenchmark" / "test.tsv"
DOC = ROOT / "docs" / "benchmarks.md"


def load_texts(path: Path, n: int) -> list[str]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    pool = [t for r in rows for t in (r[0], r[1]) if t.strip()]
    return [pool[i % len(pool)] for i in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, model: str, batch: int, timeout_ms: float | None = None,
                 packing: str = "auto", extra: tuple[str, ...] = ()) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "embedtune", "serve", model, "--host", "127.0.0.1", "--port", str(port),
           "--model-name", "bench", "--max-batch-size", str(batch), "--device", "cpu", "--log-level", "warning",
           "--packing", packing, *extra]
    if timeout_ms is not None:
        cmd += ["--batch-timeout-ms", str(timeout_ms)]
    proc = subprocess.Popen(cmd, cwd=ROOT)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the server did not come up in 600 s")


def load(url: str, texts: list[str], concurrency: int) -> tuple[list[float], int, float]:
    """One request per text from ``concurrency`` keep-alive connections; returns latencies (s), errors,
    seconds. A request counts as an error unless it gets a 200 with one embedding."""
    done = asyncio.run(run_jobs(url, [("good", good_payload(t)) for t in texts], concurrency))
    return done["latencies"], done["failures"]["good"], done["seconds"]


def write_section(text: str) -> None:
    """Replace (or append) the section that ``text`` begins with (its ``## `` heading line); other sections
    are left exactly as they are."""
    splice(DOC, text.splitlines()[0], text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32, help="server max batch and encode batch size")
    ap.add_argument("--batch-timeout-ms", type=float, default=None, help="the server's (default: serve's own)")
    ap.add_argument("--packing", default="auto", choices=("auto", "on", "off"), help="the server's --packing")
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", default=str(STS))
    ap.add_argument("--no-docs", action="store_true", help="print only; do not edit docs/benchmarks.md")
    ap.add_argument("--scenarios", default="mixed,big-body,burst",
                    help="hostile and heavy traffic after the clean run: a comma list of mixed, big-body, burst; "
                         "or none")
    ap.add_argument("--burst-factor", type=float, default=5.0, help="burst rate as a multiple of the clean run's")
    ap.add_argument("--burst-seconds", type=float, default=20.0, help="how long the burst's arrivals last")
    ap.add_argument("--big-body-mb", type=float, default=30.0, help="size of the big body (MiB)")
    ap.add_argument("--oversized-mb", type=float, default=10.0, help="size of the mixed run's oversized bodies (MiB)")
    args = ap.parse_args()
    texts = load_texts(Path(args.data), args.requests)

    from embedtune.batching import MicroBatcher
    from embedtune.models.embedder import Embedder

    emb = Embedder.from_pretrained(args.model, device="cpu")
    emb.encode(texts[: args.batch_size])  # warm-up

    def time_encode() -> float:
        t0 = time.perf_counter()
        emb.encode(texts, batch_size=args.batch_size)
        return len(texts) / (time.perf_counter() - t0)

    encode_before = time_encode()
    print(f"Embedder.encode before the server: {encode_before:.1f} texts/s", flush=True)

    port = free_port()
    proc = start_server(port, args.model, args.batch_size, args.batch_timeout_ms, args.packing)
    try:
        url = f"http://127.0.0.1:{port}"
        load(url, texts[: args.concurrency], args.concurrency)  # warm-up
        latencies, errors, server_s = load(url, texts, args.concurrency)
        health = httpx.get(f"{url}/health").json()
    finally:
        proc.terminate()
        proc.wait(60)

    encode_after = time_encode()
    encode_tps = (encode_before + encode_after) / 2

    # The server's batches without HTTP: same group size, same cutting into passes.
    group = max(1, round(health["embedded"] / max(health["batches"], 1)))
    rows = emb.text_tokenizer.ids(texts)
    replayer = MicroBatcher(emb, max_batch_size=args.batch_size, packing=health["packing"])
    t0 = time.perf_counter()
    for g in range(0, len(rows), group):
        replayer.embed_batch(rows[g : g + group])
    replay_tps = len(rows) / (time.perf_counter() - t0)

    lat = np.array(latencies) * 1000
    server_tps = len(texts) / server_s
    ratio = encode_tps / server_tps
    timeout_arg = f" --batch-timeout-ms {args.batch_timeout_ms:g}" if args.batch_timeout_ms is not None else ""
    timeout_arg += f" --packing {args.packing}" if args.packing != "auto" else ""
    pass_kind = "packed" if health["packing"] else "padded"
    how = ("packs the texts of each batch end to end into one sequence, with an attention mask that keeps them\n"
           "apart (no padding; `models.packing.PackedEncoder`), when `batching.plan_passes` finds that cheaper than "
           "padded passes"
           if health["packing"] else
           "cuts each batch into the padded passes of least estimated cost (padded tokens plus a per-pass "
           "cost; `batching.least_cost_chunks`)")
    verdict = "**met**" if ratio <= 1.5 and errors == 0 else "**not met**"
    section = f"""## Serving

`embedtune serve` (OpenAI-compatible `/v1/embeddings`, micro-batching) on loopback with the packaged default
model (SmolLM2-135M-Instruct, float32, CPU): {len(texts):,} requests of one STSBenchmark test sentence each,
{args.concurrency} concurrent clients, and `Embedder.encode` on the same texts in the same run, before and after
the server (never at the same time).
Target: server throughput within 1.5x of `Embedder.encode`, 0 errors — {verdict}.

| | texts/s | p50 latency (ms) | p99 latency (ms) | errors |
|---|---:|---:|---:|---:|
| server, {args.concurrency} clients, max batch {args.batch_size}, batch timeout {health['batch_timeout_ms']:g} ms \
| {server_tps:.1f} | {np.percentile(lat, 50):.0f} \
| {np.percentile(lat, 99):.0f} | {errors} |
| `Embedder.encode`, batch {args.batch_size} (mean of before {encode_before:.1f} and after \
{encode_after:.1f}) | {encode_tps:.1f} | | | |
| the server's batches replayed in-process, {group} texts each, {pass_kind}, no HTTP | {replay_tps:.1f} | | | |

`Embedder.encode` is {ratio:.2f}x the server's throughput: {encode_tps / replay_tps:.2f}x from batching
(the texts that arrive together, {group} at a time, against the whole set sorted by length) times
{replay_tps / server_tps:.2f}x from serving them over HTTP on the same two cores as the clients.
The server ran {health['batches']:,} batches
({health['embedded'] / max(health['batches'], 1):.1f} texts on average, largest {health['max_requests_per_batch']} \
requests) and spent {health['forward_seconds']:.0f} s of its {server_s:.0f} s embedding them.
`encode` sorts all texts by length before batching, so its batches carry almost no padding; the server
holds only the texts that arrive together, so it {how}.
{machine_line()}
Command: `.venv/bin/python benchmarks/serve_load.py --requests {args.requests} \
--concurrency {args.concurrency}{timeout_arg}`
"""
    print(section)
    if not args.no_docs:
        write_section(section)
        print(f"wrote the Serving section of {DOC}")
    scenarios = [s for s in args.scenarios.split(",") if s.strip() not in ("", "none")]
    if not scenarios:
        return 0 if errors == 0 else 1
    from serve_traffic import run_scenarios

    def start(extra: tuple[str, ...]) -> tuple[str, subprocess.Popen]:
        port = free_port()
        return f"http://127.0.0.1:{port}", start_server(port, args.model, args.batch_size, args.batch_timeout_ms,
                                                        args.packing, extra)

    clean = {"p99_ms": float(np.percentile(lat, 99)), "p50_ms": float(np.percentile(lat, 50)),
             "texts_per_s": server_tps, "errors": errors}
    section, met = run_scenarios(args, texts, clean, start, machine_line())
    print(section)
    if not args.no_docs:
        write_section(section)
        print(f"wrote the hostile-traffic section of {DOC}")
    return 0 if errors == 0 and met else 1


def machine_line() -> str:
    """Date, commit, CPU, load, torch and Python of this run (one markdown line)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return (f"Run {time.strftime('%Y-%m-%d')} at commit {commit}. Machine: {cpu}, {os.cpu_count()} CPU cores "
            f"(1-min load average {os.getloadavg()[0]:.1f} at the end), torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, Python {platform.python_version()}.")


if __name__ == "__main__":
    sys.exit(main())
