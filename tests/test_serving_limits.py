"""Heavy and hostile traffic: request-size cap, fairness between large and small requests, back-pressure,
slow clients and graceful shutdown. Nothing here is timed: each test holds the model or the client at a
chosen point and checks what has (and has not) happened by then."""

from __future__ import annotations

import json
import os
import signal
import threading

import httpx
import numpy as np
import pytest
from serving_helpers import AUTH, KEY, SAFETY_S, TIMEOUT, HeldPasses, RawConnection, chunked, wait_until

from embedtune.batching import fair_shares
from embedtune.models.embedder import Embedder
from embedtune.serving import ServeLimits, create_app, make_server, running_server
from embedtune.serving.app import text_chunks

TEXTS = ["a man plays guitar", "the dog", "two children are playing in the park", "cat"]
GOOD = b'{"input": "dog"}'


@pytest.fixture(scope="module")
def embedder(tiny_llama):
    return Embedder.from_pretrained(str(tiny_llama), device="cpu", prompt="p3", max_length=12)


def post_in_thread(url: str, payload, results: dict, name: str, **kwargs) -> threading.Thread:
    def run() -> None:
        results[name] = httpx.post(f"{url}/v1/embeddings", headers=AUTH, timeout=SAFETY_S, **kwargs)
        results.setdefault("order", []).append(name)

    thread = threading.Thread(target=run, args=(), daemon=True)
    thread.start()
    return thread


def health(url: str) -> dict:
    return httpx.get(f"{url}/health", timeout=TIMEOUT).json()


# ---- request size -------------------------------------------------------------------------------------
def test_bodies_over_the_cap_are_refused_before_they_are_read_and_keep_alive_survives(embedder):
    app = create_app(embedder, model_name="tiny", api_key=KEY, limits=ServeLimits(max_request_bytes=1024))
    with running_server(app) as url:
        conn = RawConnection(url)
        conn.send(conn.head(10**12))  # a terabyte announced, nothing sent: the 413 comes without waiting for it
        status, _, body = conn.response()
        assert status == 413 and json.loads(body)["error"]["code"] == "request_too_large"
        conn.close()
        conn = RawConnection(url)
        big = b'{"input": "' + b"dog " * 1000 + b'"}'
        assert conn.post(big)[0] == 413  # sent whole: refused unread, drained, and the connection stays
        assert conn.post(GOOD)[0] == 200
        conn.send(conn.head(None) + chunked(*[big[i : i + 300] for i in range(0, len(big), 300)]))
        assert conn.response()[0] == 413  # chunked: refused once it passed the cap
        assert conn.post(GOOD)[0] == 200
        exact = b'{"input": "dog"}'.ljust(1024)
        assert conn.post(exact)[0] == 200 and conn.post(exact + b" ")[0] == 413
        conn.close()
        assert health(url)["refused"] == {"request_too_large": 4}


def test_small_requests_are_answered_while_a_large_body_is_still_arriving(embedder):
    app = create_app(embedder, model_name="tiny", api_key=KEY, limits=ServeLimits(max_request_bytes=4096))
    sent, release = threading.Event(), threading.Event()

    def slow_body():
        yield b'{"input": ["'
        yield b"the dog " * 1000  # past the cap
        sent.set()
        release.wait(SAFETY_S)  # the rest never comes until the small requests are answered
        yield b'"]}'

    with running_server(app) as url:
        results: dict = {}
        big = post_in_thread(url, None, results, "big", content=slow_body())
        sent.wait(SAFETY_S)
        small = [httpx.post(f"{url}/v1/embeddings", json={"input": t}, headers=AUTH, timeout=SAFETY_S) for t in TEXTS]
        assert "big" not in results  # still sending its body
        release.set()
        big.join(SAFETY_S)
    assert [r.status_code for r in small] == [200] * 4 and results["big"].status_code == 413
    got = np.array([r.json()["data"][0]["embedding"] for r in small])
    np.testing.assert_allclose(got, embedder.encode(TEXTS), atol=1e-5)


# ---- fairness -----------------------------------------------------------------------------------------
def test_a_small_request_is_answered_while_a_large_one_is_being_embedded(embedder):
    app = create_app(embedder, model_name="tiny", api_key=KEY, max_inputs=256, max_batch_size=4)
    batcher = app.state.batcher
    real, passes, small_answered = batcher.embed_batch, [], threading.Event()

    def held(rows):
        # Pass 1 (the large request's first rows) lasts until the small request is queued; from pass 3 on,
        # the large request waits for the small answer. An unfair batcher would never embed the small one
        # in pass 2, and the large request would wait for it in vain (for SAFETY_S).
        passes.append(len(rows))
        if len(passes) == 1:
            wait_until(lambda: batcher.pending > 0, "the small request to be queued")
        elif len(passes) >= 3:
            small_answered.wait(SAFETY_S)
        return real(rows)

    batcher.embed_batch = held
    big_texts = [["the dog", "a cat", "the man plays", "a woman sits on the car"][i % 4] for i in range(40)]
    with running_server(app) as url:
        results: dict = {}
        big = post_in_thread(url, None, results, "big", json={"input": big_texts})
        wait_until(lambda: passes, "the large request's first pass")
        small = post_in_thread(url, None, results, "small", json={"input": TEXTS[1]})
        small.join(SAFETY_S)
        small_answered.set()
        big.join(SAFETY_S)
    assert results["order"] == ["small", "big"], passes
    np.testing.assert_allclose(results["small"].json()["data"][0]["embedding"], embedder.encode([TEXTS[1]])[0],
                               atol=1e-5)
    got = np.array([d["embedding"] for d in results["big"].json()["data"]])
    np.testing.assert_allclose(got, embedder.encode(big_texts), atol=1e-5)
    assert max(passes) <= 4 and sum(passes) == 41


def test_fair_shares_finish_small_requests_and_keep_large_ones_moving():
    assert fair_shares([1, 100, 2], 8) == [1, 5, 2]
    assert fair_shares([100, 100, 3], 9) == [3, 3, 3]
    assert fair_shares([100, 100], 8) == [4, 4]
    assert fair_shares([1] * 6, 4) == [1, 1, 1, 1, 0, 0]  # more requests than rows: the earliest first
    assert fair_shares([5], 32) == [5] and fair_shares([], 8) == []
    for remaining in ([7, 1, 30, 2, 2], [50] * 7, [3, 40]):
        shares = fair_shares(remaining, 16)
        assert sum(shares) == min(16, sum(remaining)) and all(0 < s <= r for s, r in zip(shares, remaining))


def test_text_chunks_bound_the_characters_per_tokenizer_call():
    texts = ["a" * 10, "b" * 10, "c" * 25, "d", "e" * 100]
    assert text_chunks(texts, max_chars=30, max_texts=64) == [(0, 2), (2, 4), (4, 5)]
    assert text_chunks(texts, max_chars=10**6, max_texts=2) == [(0, 2), (2, 4), (4, 5)]
    assert text_chunks([]) == []


# ---- back-pressure ------------------------------------------------------------------------------------
def test_over_the_queue_cap_requests_get_503_with_retry_after_and_service_recovers(embedder):
    app = create_app(embedder, model_name="tiny", api_key=KEY, max_inputs=8, limits=ServeLimits(max_queued_texts=4))
    held = HeldPasses(app.state.batcher)
    with running_server(app) as url:
        results: dict = {}
        first = post_in_thread(url, None, results, "first", json={"input": TEXTS[:3]})
        wait_until(lambda: health(url)["queued_texts"] == 3, "the first request to be admitted")
        refused = httpx.post(f"{url}/v1/embeddings", json={"input": TEXTS[:3]}, headers=AUTH, timeout=TIMEOUT)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "overloaded", refused.text
        assert int(refused.headers["retry-after"]) >= 1
        fits = post_in_thread(url, None, results, "fits", json={"input": TEXTS[3]})  # 3 + 1 <= 4
        wait_until(lambda: health(url)["queued_texts"] == 4, "the second request to be admitted")
        assert health(url)["refused"] == {"overloaded": 1}
        held.release()
        first.join(SAFETY_S)
        fits.join(SAFETY_S)
        assert results["first"].status_code == results["fits"].status_code == 200
        assert health(url)["queued_texts"] == 0
        # 8 texts > 4, but alone: admitted
        again = httpx.post(f"{url}/v1/embeddings", json={"input": TEXTS * 2}, headers=AUTH, timeout=TIMEOUT)
        assert again.status_code == 200 and len(again.json()["data"]) == 8


# ---- slow clients -------------------------------------------------------------------------------------
def test_slow_and_idle_clients_are_cut_off(embedder):
    limits = ServeLimits(client_timeout=0.5, keep_alive_timeout=0.5)
    app = create_app(embedder, model_name="tiny", api_key=KEY, limits=limits)
    with running_server(app) as url:
        conn = RawConnection(url)
        conn.send(conn.head(100) + b'{"input": ')  # then stalls mid-body
        status, headers, body = conn.response()
        assert status == 408 and json.loads(body)["error"]["code"] == "client_timeout"
        assert headers["connection"] == "close" and conn.closed_by_server()
        conn = RawConnection(url)
        conn.send(b"POST /v1/embeddings HTTP/1.1\r\nHost: test\r\n")  # a head that never ends
        assert conn.closed_by_server()
        assert RawConnection(url).closed_by_server()  # connects and sends nothing
        conn = RawConnection(url)
        assert conn.post(GOOD)[0] == 200
        assert conn.closed_by_server()  # idle after its response: the keep-alive timeout
        assert health(url)["refused"] == {"client_timeout": 1}


# ---- shutdown -----------------------------------------------------------------------------------------
def test_shutdown_finishes_in_flight_requests_and_refuses_new_ones(embedder):
    app = create_app(embedder, model_name="tiny", api_key=KEY)
    held = HeldPasses(app.state.batcher)
    with running_server(app) as url:
        results: dict = {}
        in_flight = post_in_thread(url, None, results, "in_flight", json={"input": TEXTS})
        held.started.wait(SAFETY_S)
        app.state.server.handle_exit(signal.SIGTERM, None)  # what SIGTERM calls
        try:
            late = httpx.post(f"{url}/v1/embeddings", json={"input": "dog"}, headers=AUTH, timeout=SAFETY_S)
            assert late.status_code == 503 and late.json()["error"]["code"] == "shutting_down"
        except httpx.TransportError:
            pass  # or the listening socket is already closed: refused either way
        assert "in_flight" not in results
        held.release()
        in_flight.join(SAFETY_S)
    got = np.array([d["embedding"] for d in results["in_flight"].json()["data"]])
    np.testing.assert_allclose(got, embedder.encode(TEXTS), atol=1e-5)
    with pytest.raises(RuntimeError):  # the lifespan ended: the model's worker stopped
        app.state.batcher.submit([[1, 2]])


def test_a_real_sigterm_lets_the_in_flight_request_finish_and_stops_the_server(embedder):
    import socket

    app = create_app(embedder, model_name="tiny", api_key=KEY)
    held = HeldPasses(app.state.batcher)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = make_server(app, log_level="warning")
    results: dict = {}

    def client() -> None:
        try:
            wait_until(lambda: server.started, "the server to start")
            in_flight = post_in_thread(url, None, results, "in_flight", json={"input": TEXTS})
            held.started.wait(SAFETY_S)
            os.kill(os.getpid(), signal.SIGTERM)  # to this process: the main thread runs the server
            wait_until(lambda: app.state.admission.shutting_down, "the signal to reach the app")
            held.release()
            in_flight.join(SAFETY_S)
        finally:
            server.should_exit = True  # never leave the main thread serving

    # uvicorn re-raises the signal after draining, with the handler it found: make that one harmless
    relayed: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda sig, frame: relayed.append(sig))
    helper = threading.Thread(target=client, daemon=True)
    helper.start()
    try:
        server.run(sockets=[sock])  # in the main thread, where uvicorn installs its signal handlers
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    helper.join(SAFETY_S)
    got = np.array([d["embedding"] for d in results["in_flight"].json()["data"]])
    np.testing.assert_allclose(got, embedder.encode(TEXTS), atol=1e-5)
    assert relayed == [signal.SIGTERM]
    with pytest.raises(httpx.TransportError):  # stopped: nothing listens any more
        httpx.get(f"{url}/health", timeout=TIMEOUT)
