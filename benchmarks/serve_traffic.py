"""Hostile and heavy traffic against a running ``embedtune serve`` (used by ``serve_load.py``).

Three measurements, the targets of issue 16:

- :func:`run_jobs` with :func:`mixed_jobs`: good requests mixed with 1% bad ones (malformed JSON, wrong
  types, over-long texts, invalid Unicode) and 0.1% oversized bodies, from keep-alive connections;
- :func:`big_body`: a body of tens of MB uploaded over a few seconds while small requests are timed on a
  second connection;
- :func:`burst`: open-loop arrivals at a multiple of the sustainable rate, the server's RSS sampled, then
  how soon the service answers normally again.

The clients are raw asyncio streams (:class:`Connection`): they share the two cores with the server, and a
general-purpose HTTP client would take more of them.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter

import numpy as np

from embedtune.serving.guard import ServeLimits

MiB = 2**20


class Connection:
    """One keep-alive HTTP/1.1 connection: writes a request, reads one response (the server always sends a
    Content-Length)."""

    def __init__(self, url: str) -> None:
        self.host, port = url.removeprefix("http://").rsplit(":", 1)
        self.port = int(port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, payload: bytes) -> tuple[int, bytes, bool]:
        """``(status, body, closing)``; ``closing`` when the server said ``Connection: close``."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=2 * MiB)
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n").encode()
        self.writer.write(head + payload)
        await self.writer.drain()
        return await read_response(self.reader)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    header = await reader.readuntil(b"\r\n\r\n")
    lines = header.decode("latin-1").split("\r\n")
    fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = await reader.readexactly(int(fields.get("content-length", 0)))
    return int(lines[0].split()[1]), body, fields.get("connection", "").lower() == "close"


def good_payload(text: str) -> bytes:
    return json.dumps({"input": text, "model": "bench"}).encode()


def bad_payloads() -> list[tuple[str, bytes]]:
    """One request of each bad kind, named."""
    return [
        ("malformed JSON", b'{"input": ["a man plays", '),
        ("wrong type", b'{"input": 3, "model": "bench"}'),
        ("wrong item type", b'{"input": ["a dog", null], "model": "bench"}'),
        ("over-long, past the character bound", good_payload("word " * 40_000)),
        ("over-long, tokenized", good_payload("a man plays a guitar " * 100)),
        ("invalid Unicode", b'{"input": ["\\ud800 abc"], "model": "bench"}'),
    ]


def mixed_jobs(texts: list[str], bad_fraction: float, oversized_fraction: float, oversized_mb: float,
               seed: int = 0) -> list[tuple[str, bytes]]:
    """``(kind, body)`` for every good text, plus bad and oversized requests, shuffled (fixed seed)."""
    jobs = [("good", good_payload(t)) for t in texts]
    bads = bad_payloads()
    jobs += [("bad", bads[i % len(bads)][1]) for i in range(round(len(texts) * bad_fraction))]
    big = b'{"input": ["' + b"a" * int(oversized_mb * MiB) + b'"], "model": "bench"}'
    jobs += [("oversized", big)] * round(len(texts) * oversized_fraction)
    random.Random(seed).shuffle(jobs)
    return jobs


def _outcome(kind: str, status: int, body: bytes) -> bool:
    if kind == "good":
        try:
            data = json.loads(body)["data"] if status == 200 else []
        except (ValueError, KeyError):
            return False
        return len(data) == 1 and len(data[0]["embedding"]) > 0
    if kind == "oversized":
        return status == 413
    return 400 <= status < 500


async def run_jobs(url: str, jobs: list[tuple[str, bytes]], concurrency: int) -> dict:
    """Send the jobs from ``concurrency`` workers, each on its own keep-alive connection (reopened when the
    server closes it). Returns latencies of good requests (s), failures by kind, statuses by kind, seconds."""
    latencies: list[float] = []
    failures: Counter = Counter()
    statuses: Counter = Counter()
    next_i = 0

    async def worker() -> None:
        nonlocal next_i
        conn = Connection(url)
        try:
            while next_i < len(jobs):
                kind, payload = jobs[next_i]
                next_i += 1
                t0 = time.perf_counter()
                try:
                    status, body, closing = await conn.post("/v1/embeddings", payload)
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                    status, body, closing = 0, b"", True
                if kind == "good":
                    latencies.append(time.perf_counter() - t0)
                statuses[kind, status] += 1
                failures[kind] += not _outcome(kind, status, body)
                if closing:
                    conn.close()
        finally:
            conn.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"latencies": latencies, "failures": failures, "statuses": statuses, "seconds": time.perf_counter() - start}


async def big_body(url: str, size_mb: float, upload_seconds: float, chunked: bool) -> dict:
    """Upload one JSON body of ``size_mb`` MB holding one string, in 1 MB pieces over ``upload_seconds``,
    while a second connection sends one small request after another. Returns the big request's status and
    when its response came (s after the upload began), the upload's duration and the small latencies (s)."""
    conn = Connection(url)
    reader, writer = await asyncio.open_connection(conn.host, conn.port)
    size = int(size_mb * MiB)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
    writer.write(f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"
                 .encode())
    pieces = [b'{"input": ["'] + [b"a" * MiB] * max(1, size // MiB - 1)
    pieces.append(b"a" * (size - sum(map(len, pieces)) - 3) + b'"]}')
    start = time.perf_counter()
    result: dict = {"status": None, "answered_s": None, "small": []}

    async def upload() -> None:
        try:
            for piece in pieces:
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                await writer.drain()
                await asyncio.sleep(upload_seconds / len(pieces))
            if chunked:
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except OSError:
            pass  # the server closed the connection after answering
        result["upload_s"] = time.perf_counter() - start

    async def answer() -> None:
        status, _, _ = await read_response(reader)
        result["status"], result["answered_s"] = status, time.perf_counter() - start

    async def probe(until: asyncio.Task) -> None:
        small = Connection(url)
        while not until.done():
            t0 = time.perf_counter()
            status, _, _ = await small.post("/v1/embeddings", good_payload("A man is playing a guitar."))
            result["small"].append((time.perf_counter() - t0, status))
        small.close()

    sending = asyncio.create_task(upload())
    await asyncio.gather(sending, answer(), probe(sending))
    writer.close()
    return result


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


async def burst(url: str, pid: int, texts: list[str], rate: float, seconds: float) -> dict:
    """Open-loop arrivals: one request every ``1 / rate`` s for ``seconds``, each on an idle pooled connection
    or a new one, the server's RSS sampled every 0.1 s. Then one small request every 0.25 s until one gets
    200; then wait until nothing is queued. Returns counts by status, latencies of the 200s, RSS, recovery."""
    loop = asyncio.get_running_loop()
    idle: list[Connection] = []
    statuses: Counter = Counter()
    ok_latencies: list[float] = []
    rss = [rss_mib(pid)]

    async def one(text: str) -> None:
        conn = idle.pop() if idle else Connection(url)
        t0 = time.perf_counter()
        try:
            status, _, closing = await conn.post("/v1/embeddings", good_payload(text))
        except (OSError, asyncio.IncompleteReadError, ValueError):
            status, closing = 0, True
        statuses[status] += 1
        if status == 200:
            ok_latencies.append(time.perf_counter() - t0)
        if closing:
            conn.close()
        else:
            idle.append(conn)

    async def sample(stop: asyncio.Event) -> None:
        while not stop.is_set():
            rss.append(rss_mib(pid))
            await asyncio.sleep(0.1)

    stop = asyncio.Event()
    sampler = asyncio.create_task(sample(stop))
    start, tasks = loop.time(), []
    for i in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
        tasks.append(asyncio.create_task(one(texts[i % len(texts)])))
    end = time.perf_counter()
    probe, first_ok = Connection(url), None
    while first_ok is None:
        status, _, closing = await probe.post("/v1/embeddings", good_payload(texts[0]))
        if status == 200:
            first_ok = time.perf_counter() - end
        else:
            if closing:
                probe.close()
            await asyncio.sleep(0.25)
    await asyncio.gather(*tasks)
    drained = time.perf_counter() - end
    t0 = time.perf_counter()
    status, _, _ = await probe.post("/v1/embeddings", good_payload(texts[0]))
    after = time.perf_counter() - t0
    probe.close()
    stop.set()
    await sampler
    for conn in idle:
        conn.close()
    lat = np.array(ok_latencies or [0.0])
    return {"sent": len(tasks), "statuses": statuses, "p50": float(np.percentile(lat, 50)),
            "p99": float(np.percentile(lat, 99)), "rss_before": rss[0], "rss_peak": max(rss),
            "first_ok_s": first_ok, "drained_s": drained, "after_latency_s": after, "after_status": status}


# ---- the scenarios and their report --------------------------------------------------------------------
def run_scenarios(args, texts: list[str], clean: dict, start, machine: str) -> tuple[str, bool]:
    """Run the scenarios named in ``args.scenarios`` on a fresh server (``start(extra_args) -> (url, proc)``),
    the big body also on one whose cap lets it in. Returns the markdown section and whether all targets
    were met."""
    import httpx

    wanted = {s.strip() for s in args.scenarios.split(",")}
    done: dict = {}
    url, proc = start(())
    try:
        if "mixed" in wanted:
            jobs = mixed_jobs(texts, 0.01, 0.001, args.oversized_mb)
            done["jobs"] = Counter(kind for kind, _ in jobs)
            done["mixed"] = asyncio.run(run_jobs(url, jobs, args.concurrency))
        if "big-body" in wanted:
            done["big"] = {name: asyncio.run(big_body(url, args.big_body_mb, 3.0, chunked))
                           for name, chunked in (("Content-Length, refused unread", False),
                                                 ("chunked, refused once past the cap", True))}
        if "burst" in wanted:
            rate = clean["texts_per_s"] * args.burst_factor
            done["burst"] = asyncio.run(burst(url, proc.pid, texts, rate, args.burst_seconds))
        done["health"] = httpx.get(f"{url}/health").json()
    finally:
        proc.terminate()
        proc.wait(60)
    if "big-body" in wanted:
        url, proc = start(("--max-request-bytes", str(int((args.big_body_mb + 1) * MiB))))
        try:
            done["big"]["Content-Length, cap raised: read, parsed, refused by the character bound"] = asyncio.run(
                big_body(url, args.big_body_mb, 3.0, False))
        finally:
            proc.terminate()
            proc.wait(60)
    return hostile_section(args, clean, done, machine)


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def hostile_section(args, clean: dict, done: dict, machine: str) -> tuple[str, bool]:
    health = done["health"]
    parts = [f"""## Serving under hostile and heavy traffic

Issue 16's targets, measured by `benchmarks/serve_load.py` after the clean run above, on a fresh
`embedtune serve` of the same model with default limits (max request {ServeLimits().max_request_bytes:,} bytes, \
{health['max_queued_texts']} queued texts, {ServeLimits().max_connections} connections), the clients on the same cores.
"""]
    met = True
    if "mixed" in done:
        m, jobs = done["mixed"], done["jobs"]
        lat = np.array(m["latencies"]) * 1000
        p99 = float(np.percentile(lat, 99))
        ok = (m["failures"]["good"] == 0, m["failures"]["bad"] == 0 and m["failures"]["oversized"] == 0,
              p99 <= 1.5 * clean["p99_ms"])
        met &= all(ok)
        parts.append(f"""
Mixed traffic: the clean run's {jobs['good']:,} requests with {jobs['bad']} bad ones (cycling through
{', '.join(name for name, _ in bad_payloads())}) and {jobs['oversized']} oversized bodies of \
{args.oversized_mb:g} MiB, shuffled, {args.concurrency} clients.

| requests | count | failed | p50 (ms) | p99 (ms) |
|---|---:|---:|---:|---:|
| clean run (above), good | {args.requests:,} | {clean['errors']} | {clean['p50_ms']:.0f} | {clean['p99_ms']:.0f} |
| mixed run, good | {jobs['good']:,} | {m['failures']['good']} | {np.percentile(lat, 50):.0f} | {p99:.0f} |
| mixed run, bad (a 4xx expected) | {jobs['bad']} | {m['failures']['bad']} | | |
| mixed run, oversized (413 expected) | {jobs['oversized']} | {m['failures']['oversized']} | | |

0 good requests fail: {_verdict(ok[0])}. Every bad request gets a 4xx: {_verdict(ok[1])}. p99 of the good
requests {p99 / clean['p99_ms']:.2f}x that of the clean run (at most 1.5x): {_verdict(ok[2])}.
""")
    if "big" in done:
        rows, worst = [], 0.0
        for name, b in done["big"].items():
            small = [s for s, _ in b["small"]] or [0.0]
            worst = max(worst, max(small))
            rows.append(f"| {name} | {b['status']} | {b['answered_s']:.2f} | {b['upload_s']:.2f} | {len(b['small'])} "
                        f"| {all(st == 200 for _, st in b['small'])} | {np.median(small) * 1000:.0f} "
                        f"| {max(small) * 1000:.0f} |")
        met &= worst < 1.0
        parts.append(f"""
Big body: one JSON body of {args.big_body_mb:g} MiB holding one string, written in 1 MiB pieces over about 3 s,
while a second connection sends one-sentence requests one after another until the upload ends.

| body | answer | answered after (s) | upload took (s) | small requests | all 200 | median (ms) | max (ms) |
|---|---:|---:|---:|---:|---|---:|---:|
""" + "\n".join(rows) + f"""

Every small request completes in under 1 s while the body is in flight: {_verdict(worst < 1.0)} \
(slowest {worst * 1000:.0f} ms).
""")
    if "burst" in done:
        b = done["burst"]
        st = b["statuses"]
        refused = st.get(503, 0) + st.get(429, 0)
        met &= refused > 0 and b["after_status"] == 200
        by_queue = health["refused"].get("overloaded", 0)  # only the burst fills the queue
        refusal_counts = ", ".join(f"{code} {n:,}" for code, n in sorted(health["refused"].items())) or "none"
        parts.append(f"""
Burst: open-loop arrivals at {args.burst_factor:g}x the clean run's rate ({clean['texts_per_s'] * args.burst_factor:.0f}
requests/s) for {args.burst_seconds:g} s ({b['sent']:,} requests), each on an idle connection or a new one.

| answered 200 | refused 503/429 | other | p50 / p99 of the 200s (ms) | server RSS before / peak (MiB) \
| first 200 after the burst (s) | all answered after (s) | a request then (ms) |
|---:|---:|---:|---|---|---:|---:|---:|
| {st.get(200, 0):,} | {refused:,} | {b['sent'] - st.get(200, 0) - refused} \
| {b['p50'] * 1000:.0f} / {b['p99'] * 1000:.0f} | {b['rss_before']:.0f} / {b['rss_peak']:.0f} \
| {b['first_ok_s']:.2f} | {b['drained_s']:.2f} | {b['after_latency_s'] * 1000:.0f} |

The excess is refused and the service answers again after the burst: \
{_verdict(refused > 0 and b['after_status'] == 200)}. Of the {refused:,} refusals, {by_queue:,} came from the \
queue cap (503 `overloaded` with Retry-After, counted in `/health`) and {refused - by_queue:,} from uvicorn \
past --max-connections ({ServeLimits().max_connections}; a plain \
503, not seen by the app): with one text per request the connection cap binds before the queue cap. A new
request after the burst waits for those admitted during it to be answered first.
Refusals `/health` counted over all scenarios, by code: {refusal_counts}.
""")
    parts.append(f"""
{machine}
Command: `.venv/bin/python benchmarks/serve_load.py --requests {args.requests} \
--concurrency {args.concurrency} --scenarios {args.scenarios} --burst-seconds {args.burst_seconds:g}`
""")
    return "".join(parts), met
