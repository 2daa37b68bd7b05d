"""Hostile and malformed input: every bad body gets a 4xx naming what is wrong, never a 500 or a dropped
connection, and the server's vectors do not change afterwards."""

from __future__ import annotations

import hmac
import json

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serving_helpers import AUTH, KEY, SAFETY_S, TIMEOUT, RawConnection

from embedtune.models.embedder import Embedder
from embedtune.serving import create_app, running_server

TEXTS = ["a man plays guitar", "the dog", "two children are playing in the park", "cat"]
TOKEN_CHARS = 8  # the longest entries of the tests' vocabulary: "children", "sentence"


@pytest.fixture(scope="module")
def embedder(tiny_llama):
    return Embedder.from_pretrained(str(tiny_llama), device="cpu", prompt="p3", max_length=12)


@pytest.fixture(scope="module")
def server(embedder):
    app = create_app(embedder, model_name="tiny", api_key=KEY, max_inputs=8)
    with running_server(app) as url:
        yield url, app


def vectors(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array([d["embedding"] for d in response.json()["data"]])


def assert_error(status: int, body: bytes, expect_status: int, code: str, param: str | None = None) -> None:
    assert status == expect_status, body
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == code and err["message"]
    if param is not None:
        assert err["param"] == param and param in err["message"]


@pytest.mark.parametrize(("body", "status", "code", "param"), [
    (b'{"input": ["\\ud800 abc"]}', 422, "invalid_text", "input[0]"),
    (b'{"input": ["dog", "cat \\udfff"]}', 422, "invalid_text", "input[1]"),
    ('{"input": ["dog", "a\ud800"]}'.encode("utf-8", "surrogatepass"), 422, "invalid_text", "input[1]"),
    (b'{"input": "\xff\xfe dog"}', 400, "invalid_json", None),
    (b"[" * 100_000 + b"]" * 100_000, 400, "invalid_json", None),
    (b'{"input": ' + b"[" * 100_000 + b'"a"' + b"]" * 100_000 + b"}", 400, "invalid_json", None),
    (b'{"input": "dog", "dimensions": ' + b"9" * 5000 + b"}", 400, "invalid_json", None),
    (b'{"input": "dog", "dimensions": 1e999999}', 422, "invalid_value", "dimensions"),
    (b'{"input": "dog", "dimensions": NaN}', 422, "invalid_value", "dimensions"),
    (b'{"input": "dog", "dimensions": 100000000000000000000000000000}', 422, "invalid_value", "dimensions"),
    (b'{"input": "dog", "encoding_format": ""}', 422, "invalid_value", "encoding_format"),
    (b'{"input": ["dog", "\\u3000\\n"]}', 422, "empty_input", "input[1]"),
    (b'{"input": "dog", "model": "' + b"x" * 100_000 + b'"}', 404, "model_not_found", "model"),
])
def test_hostile_bodies_get_a_4xx_and_the_connection_stays_open(server, body, status, code, param):
    url, _ = server
    conn = RawConnection(url)
    try:
        got, _, answer = conn.post(body)
        assert_error(got, answer, status, code, param)
        assert len(answer) < 1000  # the error never echoes a huge input back
        got, _, answer = conn.post(b'{"input": "dog"}')  # the same keep-alive connection
        assert got == 200 and len(json.loads(answer)["data"][0]["embedding"]) == 32
    finally:
        conn.close()


def test_nul_and_control_characters_are_embedded_as_text(server, embedder):
    url, _ = server
    texts = ["the dog\x00", "\x01cat\x1f plays\x7f", "\ufeffa man\u2028"]
    r = httpx.post(f"{url}/v1/embeddings", json={"input": texts}, headers=AUTH, timeout=TIMEOUT)
    np.testing.assert_allclose(vectors(r), embedder.encode(texts), atol=1e-5)


def test_a_text_the_tokenizer_rejects_is_a_422_naming_it(embedder, monkeypatch):
    tt = embedder.text_tokenizer
    real = tt.ids

    def picky(texts, max_length=None):
        if any("boom" in t for t in texts):
            raise TypeError("TextEncodeInput must be Union[TextInputSequence, ...]")
        return real(texts, max_length)

    monkeypatch.setattr(tt, "ids", picky)
    app = create_app(embedder, model_name="tiny")
    with running_server(app) as url:
        conn = RawConnection(url)
        status, _, body = conn.post(b'{"input": ["dog", "boom", "cat"]}')
        assert_error(status, body, 422, "invalid_text", "input[1]")
        assert conn.post(b'{"input": ["dog", "cat"]}')[0] == 200
        conn.close()


def test_a_model_failure_is_a_json_500_and_keeps_the_connection(embedder):
    app = create_app(embedder, model_name="tiny")
    real = app.state.batcher.embed_batch
    calls = []

    def fail_once(rows):
        calls.append(len(rows))
        if len(calls) == 1:
            raise RuntimeError("out of memory (simulated)")
        return real(rows)

    app.state.batcher.embed_batch = fail_once
    with running_server(app) as url:
        conn = RawConnection(url)
        status, _, body = conn.post(b'{"input": "dog"}')
        assert status == 500 and json.loads(body)["error"]["type"] == "server_error"
        assert conn.post(b'{"input": "dog"}')[0] == 200
        conn.close()


def test_texts_over_the_character_bound_are_refused_or_cut_before_tokenizing(server, embedder, monkeypatch):
    url, app = server
    limits = app.state.text_limits
    assert (limits.max_tokens, limits.token_chars, limits.max_chars) == (12, TOKEN_CHARS, 12 * TOKEN_CHARS)
    seen: list[int] = []
    real = embedder.text_tokenizer.ids
    monkeypatch.setattr(embedder.text_tokenizer, "ids",
                        lambda texts, max_length=None: seen.extend(map(len, texts)) or real(texts, max_length))
    huge = "the dog the cat " * 100_000  # 1.6 M characters
    r = httpx.post(f"{url}/v1/embeddings", json={"input": ["dog", huge]}, headers=AUTH, timeout=SAFETY_S)
    assert r.status_code == 422 and r.json()["error"]["param"] == "input[1]", r.text
    assert r.json()["error"]["code"] == "input_too_long" and max(seen, default=0) <= limits.max_chars
    r = httpx.post(f"{url}/v1/embeddings", json={"input": huge, "truncate": True}, headers=AUTH, timeout=SAFETY_S)
    assert max(seen) <= limits.max_chars  # cut by characters before the tokenizer saw it
    monkeypatch.undo()
    np.testing.assert_allclose(vectors(r), embedder.encode([huge]), atol=1e-5)  # same as cutting tokens
    assert r.json()["usage"]["prompt_tokens"] == 12


def test_the_api_key_is_compared_in_constant_time(server, monkeypatch):
    url, _ = server
    seen = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: seen.append((a, b)) or real(a, b))
    assert httpx.post(f"{url}/v1/embeddings", json={"input": "dog"}, headers=AUTH, timeout=TIMEOUT).status_code == 200
    assert httpx.post(f"{url}/v1/embeddings", json={"input": "dog"},
                      headers={"Authorization": "Bearer test-kez"}, timeout=TIMEOUT).status_code == 401
    assert seen == [(f"Bearer {KEY}".encode(),) * 2, (b"Bearer test-kez", f"Bearer {KEY}".encode())]


# ---- property-based: random bodies ---------------------------------------------------------------------
chars = st.one_of(st.characters(max_codepoint=0x7F), st.characters(max_codepoint=0xFFFF), st.characters(),
                  st.integers(0xD800, 0xDFFF).map(chr),
                  st.sampled_from(["\x00", "\x01", "\x1f", "\x7f", "\ufeff", "\u2028", " ", "\t", "\n"]))
texts = st.one_of(st.text(chars, max_size=30), st.sampled_from(TEXTS), st.text(st.sampled_from("dog cat"), max_size=60))
leaves = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30), st.floats(), texts)
values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
                      max_leaves=12)
requests = st.fixed_dictionaries({}, optional={
    "input": st.one_of(texts, st.lists(st.one_of(texts, texts, values), max_size=10), values),
    "model": st.one_of(st.just("tiny"), values),
    "encoding_format": st.one_of(st.sampled_from(["float", "base64"]), values),
    "dimensions": st.one_of(st.integers(-3, 40), values),
    "truncate": st.one_of(st.booleans(), values),
})
likely_valid = st.fixed_dictionaries({"input": st.lists(texts, min_size=1, max_size=8)}, optional={
    "truncate": st.booleans(), "dimensions": st.integers(1, 32),
    "encoding_format": st.sampled_from(["float", "base64"])})
# ensure_ascii=False with a lone surrogate gives raw (CESU-style) surrogate bytes, which JSON decoders accept
one_text = st.fixed_dictionaries({"input": texts})
encoded = st.tuples(st.one_of(likely_valid, one_text, requests, values), st.booleans()).map(
    lambda v: json.dumps(v[0], ensure_ascii=v[1]).encode("utf-8", "surrogatepass"))
nested = st.tuples(st.integers(1, 50_000), st.sampled_from([b"[", b'{"input":'])).map(
    lambda v: v[1] * v[0] + b'"a"' + (b"]" if v[1] == b"[" else b"}") * v[0])
huge_numbers = st.integers(300, 6000).map(lambda n: b'{"input": "dog", "dimensions": ' + b"9" * n + b"}")
bodies = st.one_of(encoded, encoded, encoded, st.binary(max_size=64), nested, huge_numbers)


def test_fuzzed_bodies_never_get_a_500_and_the_vectors_stay_the_same(server, embedder):
    url, _ = server
    fixed = {"input": TEXTS, "model": "tiny"}
    with httpx.Client(base_url=url, headers=AUTH, timeout=SAFETY_S) as client:  # one keep-alive connection
        before = vectors(client.post("/v1/embeddings", json=fixed))

        @settings(max_examples=200, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(body=bodies)
        def never_a_500(body: bytes) -> None:
            r = client.post("/v1/embeddings", content=body, headers={"Content-Type": "application/json"})
            assert r.status_code == 200 or 400 <= r.status_code < 500, (body[:200], r.text)
            if r.status_code == 200:
                data = r.json()["data"]
                assert data and all(d["object"] == "embedding" for d in data)
            else:
                assert set(r.json()["error"]) == {"message", "type", "param", "code"}

        never_a_500()
        after = vectors(client.post("/v1/embeddings", json=fixed))
    np.testing.assert_allclose(after, before, atol=1e-6)
    np.testing.assert_allclose(after, embedder.encode(TEXTS), atol=1e-5)
