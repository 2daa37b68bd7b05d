"""batching.MicroBatcher: cancelled requests are skipped, large ones share passes with small ones."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from embedtune.batching import MicroBatcher
from embedtune.models.embedder import Embedder

TEXTS = ["a man plays guitar", "the dog", "two children are playing in the park", "cat"]


@pytest.fixture(scope="module")
def embedder(tiny_llama):
    return Embedder.from_pretrained(str(tiny_llama), device="cpu", max_length=12)


def test_a_request_cancelled_before_its_first_pass_is_skipped(embedder, monkeypatch):
    batcher = MicroBatcher(embedder, max_batch_size=8, batch_timeout_ms=0, packing=False)
    tt = embedder.text_tokenizer
    first, cancelled, kept = tt.ids(TEXTS[:1]), tt.ids(TEXTS[1:3]), tt.ids(TEXTS[3:])
    in_pass, release = threading.Event(), threading.Event()
    seen: list[list[list[int]]] = []
    real = embedder.encode_ids

    def held(rows, **kw):  # the first pass waits until the test has queued and cancelled behind it
        seen.append([list(r) for r in rows])
        in_pass.set()
        assert release.wait(30), "the test never released the first pass"
        return real(rows, **kw)

    monkeypatch.setattr(embedder, "encode_ids", held)
    batcher.start()
    try:
        f_first = batcher.submit(first)
        assert in_pass.wait(30)
        f_cancelled, f_kept = batcher.submit(cancelled), batcher.submit(kept)
        assert f_cancelled.cancel()  # the client went away while its request was still queued
        release.set()
        got_first, got_kept = f_first.result(30), f_kept.result(30)
    finally:
        batcher.close()
    assert f_cancelled.cancelled()
    monkeypatch.undo()
    np.testing.assert_allclose(got_first, embedder.encode_ids(first), atol=1e-6)
    np.testing.assert_allclose(got_kept, embedder.encode_ids(kept), atol=1e-6)
    embedded = [row for rows in seen for row in rows]
    assert all(list(r) not in embedded for r in cancelled)  # its rows never reached the model
    assert batcher.stats.rows == len(first) + len(kept)


def test_a_request_larger_than_a_pass_and_a_small_one_get_their_own_vectors(embedder):
    """Four rows in passes of two, shared with a one-row request: each future gets its rows, in order."""
    batcher = MicroBatcher(embedder, max_batch_size=2, batch_timeout_ms=0, packing=False)
    batcher.start()
    try:
        rows = embedder.text_tokenizer.ids(TEXTS)
        futures = [batcher.submit(rows), batcher.submit(rows[:1])]
        results = [f.result(30) for f in futures]
    finally:
        batcher.close()
    np.testing.assert_allclose(results[0], embedder.encode_ids(rows), atol=1e-6)
    np.testing.assert_allclose(results[1], embedder.encode_ids(rows[:1]), atol=1e-6)


def test_the_worker_keeps_the_prompt_prefix_cache_for_its_life(tiny_llama):
    emb = Embedder.from_pretrained(str(tiny_llama), device="cpu", prompt="this sentence {} means one word")
    rows = emb.text_tokenizer.ids(TEXTS)
    batcher = MicroBatcher(emb, max_batch_size=2, batch_timeout_ms=0, packing=False)
    batcher.start()
    try:
        got = [batcher.submit(rows[i : i + 2]).result(30) for i in (0, 2)]
        memo = emb._prefix_memo
        assert memo is not None and len(memo) == 1  # "<s> this sentence", run once for both requests
    finally:
        batcher.close()
    assert emb._prefix_memo is None  # dropped with the worker
    emb.share_prefix = False
    np.testing.assert_allclose(np.concatenate(got), emb.encode_ids(rows), atol=1e-5)
