"""Dynamic micro-batching: many concurrent requests, one forward pass.

One worker thread owns the model. Request handlers tokenize their texts (on the one tokenization path,
:class:`~embedtune.data.collate.TextTokenizer`) and queue the id rows; the worker takes the first waiting
request, keeps collecting until ``max_batch_size`` rows or ``batch_timeout_ms`` have passed, embeds the
rows and resolves each request's future once all its rows are embedded. While a forward pass runs, new
requests queue up, so under load batches fill without waiting; the timeout only matters when traffic is light.

No request can hold the model for long: a pass takes at most ``max_batch_size`` rows, shared fairly among
the requests in progress (:func:`fair_shares`), and requests that arrive meanwhile join the next pass. A
request of 2,048 texts is embedded over many passes, and a one-sentence request that arrives during them is
answered after one pass, not after all of them.

A batch holds whatever arrived together, texts of any lengths. Padded to its longest row it wastes compute
on padding; so, when the model allows it, the rows are packed end to end into one sequence whose attention
mask keeps them apart (:class:`~embedtune.models.packing.PackedEncoder`),
or cut into padded passes of similar lengths (:meth:`Embedder.encode_ids
<embedtune.models.embedder.Embedder.encode_ids>`), whichever :func:`plan_passes` estimates cheaper.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from .data.collate import longest_first
from .models.embedder import Embedder
from .models.packing import PackedEncoder

log = logging.getLogger(__name__)


PASS_COST_TOKENS = 48


def _least_cost_cuts(
    lengths: Sequence[int], max_size: int, pass_cost: Callable[[int, int, int], float]
) -> tuple[float, list[list[int]]]:
    """Rows sorted longest first, cut into runs of at most ``max_size`` where the summed
    ``pass_cost(rows, longest, tokens)`` of the runs is least (dynamic programming over cut points,
    O(n x max_size)). Only runs of the length-sorted order are considered, which is exact for padded
    passes and a close heuristic for packed ones. Returns the estimated cost and index lists into ``lengths``."""
    if max_size < 1:
        raise ValueError(f"max_size must be at least 1, got {max_size}")
    order = longest_first(lengths)
    width = [lengths[i] for i in order]  # non-increasing: a run [i, j) is as wide as its first row
    prefix = [0]
    for w in width:
        prefix.append(prefix[-1] + w)
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: least cost of the first j rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(max(0, j - max_size), j):
            cost = best[i] + pass_cost(j - i, width[i], prefix[j] - prefix[i])
            if cost < best[j]:
                best[j], cut[j] = cost, i
    runs: list[list[int]] = []
    j = n
    while j > 0:
        runs.append(order[cut[j] : j])
        j = cut[j]
    return best[n], runs[::-1]


def _padded_cost(pass_cost: float, attention_tokens: float | None) -> Callable[[int, int, int], float]:
    quad = 0.0 if attention_tokens is None else 1.0 / attention_tokens
    return lambda rows, longest, tokens: pass_cost + rows * longest + rows * longest * longest * quad


def _packed_cost(pass_cost: float, attention_tokens: float) -> Callable[[int, int, int], float]:
    """Cost of a packed pass of ``T`` tokens: ``pass_cost + T + T**2 / attention_tokens``. A packed pass has
    no padding, but with eager or SDPA attention the scores run over the whole packed sequence (the mask
    keeps rows apart; the masked scores are still computed). ``attention_tokens`` is the sequence length
    at which a token's attention costs as much as its linear layers
    (:attr:`PackedEncoder.attention_tokens <embedtune.models.packing.PackedEncoder.attention_tokens>`), so
    short texts go into one pass and long ones get passes of their own."""
    if attention_tokens <= 0:
        raise ValueError(f"attention_tokens must be positive, got {attention_tokens}")
    return lambda rows, longest, tokens: pass_cost + tokens + tokens * tokens / attention_tokens


def least_cost_chunks(
    lengths: Sequence[int], max_size: int, pass_cost: float = PASS_COST_TOKENS, attention_tokens: float | None = None
) -> list[list[int]]:
    """Split rows into padded forward passes of at most ``max_size`` rows at the least estimated cost.

    ``Embedder.encode`` sorts a whole corpus by length, so its batches carry almost no padding; a server
    batch holds whatever arrived together, and one pass over all of it pads every short text to the
    longest. Many small passes waste less on padding
    but pay a fixed cost per pass. The cost of a pass is modelled as ``pass_cost + rows x longest row``
    (padded tokens plus a per-pass cost in tokens; with ``attention_tokens``, plus each row's attention,
    ``rows x longest**2 / attention_tokens``), and the rows, sorted longest first, are cut where the total
    is least. How the default ``pass_cost`` was chosen: docs/benchmarks.md, section "Serving".
    """
    return _least_cost_cuts(lengths, max_size, _padded_cost(pass_cost, attention_tokens))[1]


def plan_passes(
    lengths: Sequence[int], max_size: int, attention_tokens: float, packing: bool, pass_cost: float = PASS_COST_TOKENS
) -> tuple[bool, list[list[int]]]:
    """The cheaper of packed (when ``packing``) and padded passes for one batch under the same cost model
    (attention included in both): ``(packed, runs)``. Short texts of mixed lengths pack; long texts of
    similar lengths are cheaper padded, where each row's attention covers only itself."""
    padded_cost, padded_runs = _least_cost_cuts(lengths, max_size, _padded_cost(pass_cost, attention_tokens))
    if not packing:
        return False, padded_runs
    packed_cost, packed_runs = _least_cost_cuts(lengths, max_size, _packed_cost(pass_cost, attention_tokens))
    return (True, packed_runs) if packed_cost <= padded_cost else (False, padded_runs)


@dataclass
class BatchStats:
    """What the worker has done (read by ``/health`` and the tests)."""

    batches: int = 0
    rows: int = 0
    requests: int = 0
    max_requests_per_batch: int = 0
    packed_batches: int = 0
    forward_seconds: float = 0.0
    recent: deque = field(default_factory=lambda: deque(maxlen=256))  # rows per request, one tuple per batch


def fair_shares(remaining: Sequence[int], capacity: int) -> list[int]:
    """Rows each request gets in a pass of ``capacity`` rows, given the rows each has ``remaining``.

    Water-filling: requests needing less than an equal share get all they need, and what they leave is split
    equally among the larger ones, so every request that fits its share finishes in this pass and a large
    one still progresses. With more requests than capacity, the earliest (ties keep the given order) get
    one row each."""
    shares = [0] * len(remaining)
    left = capacity
    order = sorted(range(len(remaining)), key=lambda i: remaining[i])
    for k, i in enumerate(order):
        if left <= 0:
            break
        shares[i] = min(remaining[i], max(1, left // (len(order) - k)))
        left -= shares[i]
    return shares


@dataclass
class _Job:
    rows: Sequence[Sequence[int]]
    future: Future
    order: list[int] = field(default_factory=list)  # rows longest first: a large request's passes pad little
    done: int = 0  # rows of ``order`` embedded so far
    vectors: np.ndarray | None = None  # (len(rows), D), filled pass by pass
    started: bool = False

    @property
    def remaining(self) -> int:
        return len(self.rows) - self.done

    def start(self) -> bool:
        """Mark the future running before the first pass; False if the client cancelled it first."""
        if not self.started:
            self.started = self.future.set_running_or_notify_cancel()
        return self.started


class MicroBatcher:
    """Queue of tokenized requests served by one worker thread.

    Args:
        embedder: the model; only the worker thread calls it.
        max_batch_size: rows per forward pass (a request larger than this is still embedded whole,
            in several passes).
        batch_timeout_ms: how long the worker waits for more requests after the first one arrives.
        packing: allow packed passes (no padding; taken per batch when :func:`plan_passes` finds them
            cheaper than padded ones). None (default) allows them when
            :attr:`PackedEncoder.supported <embedtune.models.packing.PackedEncoder.supported>` says the
            model gives the same vectors packed; True requires it (ValueError if not); False never packs.
    """

    def __init__(
        self, embedder: Embedder, max_batch_size: int = 32, batch_timeout_ms: float = 2.0, packing: bool | None = None
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if batch_timeout_ms < 0:
            raise ValueError(f"batch_timeout_ms must be >= 0, got {batch_timeout_ms}")
        self.packer = PackedEncoder(embedder)
        supported = self.packer.supported if packing is not False else False
        if packing and not supported:
            raise ValueError(
                "packing was asked for, but this model does not give the same embeddings for packed sequences "
                "(its attention ignores position_ids-based packing); serve without packing"
            )
        self.packing = supported
        self.embedder = embedder
        self.max_batch_size = max_batch_size
        self.batch_timeout = batch_timeout_ms / 1000.0
        self.stats = BatchStats()
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="embedtune-batcher", daemon=True)
                self._thread.start()

    def close(self, timeout: float | None = 10.0) -> None:
        """Finish the queued requests, then stop the worker (a request queued after that fails)."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)

    @property
    def pending(self) -> int:
        """Requests queued and not yet taken into a pass."""
        return self._queue.qsize()

    def submit(self, rows: Sequence[Sequence[int]]) -> Future:
        """Queue id rows; the future resolves to float32 (len(rows), D) embeddings."""
        if self._thread is None:
            raise RuntimeError("the batcher is not running; call start() first")
        future: Future = Future()
        if not rows:
            future.set_result(np.zeros((0, self.embedder.dim), dtype=np.float32))
            return future
        order = longest_first([len(r) for r in rows])
        self._queue.put(_Job(rows, future, order))
        return future

    def _gather(self, active: list[_Job]) -> bool:
        """Add queued requests to ``active``; True once :meth:`close` was called.

        Idle (``active`` empty): block for the first request, then wait up to the batch timeout for more
        until a pass is full. Busy: take only what is queued already; it joins the next pass."""
        deadline = None
        if not active:
            job = self._queue.get()
            if job is None:
                return True
            active.append(job)
            deadline = time.monotonic() + self.batch_timeout
        size = sum(j.remaining for j in active)
        while True:
            wait = deadline - time.monotonic() if deadline is not None and size < self.max_batch_size else 0
            try:
                job = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                return False
            if job is None:
                return True
            active.append(job)
            size += job.remaining

    def _run(self) -> None:
        with self.embedder.prefix_cache():  # the worker owns a fixed model: the prompt prefix runs once
            self._serve()

    def _serve(self) -> None:
        active: list[_Job] = []
        stop = False
        while True:
            stop = stop or self._gather(active)
            # A client that went away cancelled its future before its first pass: skip its rows.
            active[:] = [j for j in active if j.start()]
            if active:
                self._pass(active)
            elif stop:
                break
        while True:  # submitted after close(): fail rather than leave a caller waiting forever
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None and job.start():
                job.future.set_exception(RuntimeError("the batcher was closed"))

    def embed_batch(self, rows: Sequence[Sequence[int]]) -> np.ndarray:
        """Embed one batch of id rows as the worker does: float32 (N, D) in order. The passes are packed or
        padded, whichever :func:`plan_passes` estimates cheaper; a packed pass that fails (out of memory on
        a long pack, say) is logged and the batch is embedded padded instead. Called only by the worker
        thread, or by code that owns the model while the worker is not running (``benchmarks/serve_load.py``
        replays the server's batches with it)."""
        vectors = np.zeros((len(rows), self.embedder.dim), dtype=np.float32)  # (N, D)
        lengths = [len(r) for r in rows]
        attention = self.packer.attention_tokens
        packed, runs = plan_passes(lengths, self.max_batch_size, attention, self.packing)
        if packed:
            try:
                for idx in runs:
                    vectors[idx] = self.packer.encode([rows[i] for i in idx])
                self.stats.packed_batches += 1
                return vectors
            except Exception:  # noqa: BLE001 - the padded passes below are the fallback
                log.warning("a packed pass over %d rows failed; embedding the batch as padded passes", len(rows),
                            exc_info=True)
                runs = least_cost_chunks(lengths, self.max_batch_size, attention_tokens=attention)
        for idx in runs:
            vectors[idx] = self.embedder.encode_ids([rows[i] for i in idx], batch_size=len(idx))
        return vectors

    def _pass(self, active: list[_Job]) -> None:
        """One pass over fair shares of the requests in ``active``; finished (or failed) ones leave it."""
        shares = fair_shares([j.remaining for j in active], self.max_batch_size)
        taken = [(j, j.order[j.done : j.done + n]) for j, n in zip(active, shares) if n]
        rows = [j.rows[i] for j, idx in taken for i in idx]
        start = time.perf_counter()
        try:
            vectors = self.embed_batch(rows)  # (N, D)
        except Exception as exc:  # noqa: BLE001 - every request in the pass gets the error, the worker goes on
            log.exception("embedding a batch of %d rows failed", len(rows))
            for j, _ in taken:
                j.future.set_exception(exc)
            active[:] = [j for j in active if not j.future.done()]
            return
        s = self.stats
        s.forward_seconds += time.perf_counter() - start
        s.batches += 1
        s.rows += len(rows)
        s.max_requests_per_batch = max(s.max_requests_per_batch, len(taken))
        s.recent.append(tuple(len(idx) for _, idx in taken))
        offset = 0
        for j, idx in taken:
            if j.vectors is None:
                j.vectors = np.empty((len(j.rows), vectors.shape[1]), dtype=np.float32)  # (n, D)
            j.vectors[idx] = vectors[offset : offset + len(idx)]
            offset += len(idx)
            j.done += len(idx)
            if not j.remaining:
                s.requests += 1
                j.future.set_result(j.vectors)
        active[:] = [j for j in active if j.remaining]
