from __future__ import annotations

import base64
import threading

import httpx
import numpy as np
import pytest
from serving_helpers import TIMEOUT

from embedtune.models.embedder import Embedder
from embedtune.models.packing import PackedEncoder
from embedtune.serving import create_app, running_server

TEXTS = ["a man plays guitar", "the dog", "two children are playing in the park", "cat"]
KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def embedder(tiny_llama):
    return Embedder.from_pretrained(str(tiny_llama), device="cpu", prompt="p3", max_length=12)


@pytest.fixture(scope="module")
def server(embedder):
    # A long batch timeout makes concurrent requests meet in one batch deterministically enough.
    app = create_app(embedder, model_name="tiny", api_key=KEY, max_inputs=8, batch_timeout_ms=100)
    with running_server(app) as url:
        yield url, app


def test_openai_client_gets_embedder_vectors(server, embedder):
    import openai

    url, _ = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    expected = embedder.encode(TEXTS)
    res = client.embeddings.create(model="tiny", input=TEXTS, encoding_format="float")
    assert [d.index for d in res.data] == [0, 1, 2, 3] and res.model == "tiny"
    np.testing.assert_allclose(np.array([d.embedding for d in res.data]), expected, atol=1e-6)
    n_tokens = sum(len(r) for r in embedder.text_tokenizer.ids(TEXTS))
    assert res.usage.prompt_tokens == res.usage.total_tokens == n_tokens
    res = client.embeddings.create(model="tiny", input=TEXTS[1], encoding_format="base64")
    vec = np.frombuffer(base64.b64decode(res.data[0].embedding), dtype="<f4")
    np.testing.assert_allclose(vec, expected[1], atol=1e-6)
    res = client.embeddings.create(model="tiny", input=TEXTS, dimensions=8, encoding_format="float")
    short = np.array([d.embedding for d in res.data])
    cut = expected[:, :8] / np.linalg.norm(expected[:, :8], axis=1, keepdims=True)
    np.testing.assert_allclose(short, cut, atol=1e-6)
    assert [m.id for m in client.models.list().data] == ["tiny"]


@pytest.mark.parametrize(("body", "status", "code"), [
    (b'{"input": ["the dog"', 400, "invalid_json"),
    (b'["the dog"]', 422, "invalid_type"),
    (b'{"input": 3}', 422, "invalid_type"),
    (b'{"input": ["dog", null]}', 422, "invalid_type"),
    (b'{"input": [[1, 2, 3]]}', 422, "token_ids_not_supported"),
    (b'{"input": []}', 422, "empty_input"),
    (b'{"input": ["dog", "  "]}', 422, "empty_input"),
    (b'{"input": ["a"," b","c","d","e","f","g","h","i"]}', 413, "too_many_inputs"),
    (b'{"input": ["dog", "the dog the cat the dog the cat the dog the cat"]}', 422, "input_too_long"),
    (b'{"input": "dog", "encoding_format": "int8"}', 422, "invalid_value"),
    (b'{"input": "dog", "dimensions": 33}', 422, "invalid_value"),
    (b'{"input": "dog", "model": "other"}', 404, "model_not_found"),
])
def test_bad_requests_get_openai_errors_and_server_keeps_serving(server, body, status, code):
    url, _ = server
    r = httpx.post(f"{url}/v1/embeddings", content=body, headers={**AUTH, "Content-Type": "application/json"},
                   timeout=TIMEOUT)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"] and set(err) == {"message", "type", "param", "code"}
    if code == "input_too_long":
        assert err["param"] == "input[1]" and "input[1]" in err["message"]
    ok = httpx.post(f"{url}/v1/embeddings", json={"input": "dog", "model": "tiny"}, headers=AUTH, timeout=TIMEOUT)
    assert ok.status_code == 200 and len(ok.json()["data"][0]["embedding"]) == 32


def test_truncation_only_when_asked(server, embedder):
    url, _ = server
    long = "the dog the cat the dog the cat the dog the cat"
    r = httpx.post(f"{url}/v1/embeddings", json={"input": [long], "truncate": True}, headers=AUTH, timeout=TIMEOUT)
    assert r.status_code == 200
    np.testing.assert_allclose(r.json()["data"][0]["embedding"], embedder.encode([long])[0], atol=1e-6)
    assert r.json()["usage"]["prompt_tokens"] == 12


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}])
def test_api_key_required(server, headers):
    url, _ = server
    r = httpx.post(f"{url}/v1/embeddings", json={"input": "dog"}, headers=headers, timeout=TIMEOUT)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{url}/v1/models", headers=headers, timeout=TIMEOUT).status_code == 401
    assert httpx.get(f"{url}/health", timeout=TIMEOUT).json()["status"] == "ok"  # health stays open for probes
    assert httpx.post(f"{url}/v1/embeddings", json={"input": "dog"}, headers=AUTH, timeout=TIMEOUT).status_code == 200


def test_concurrent_requests_share_a_batch(server, embedder):
    url, app = server
    n = 6
    barrier = threading.Barrier(n)
    results: dict[int, list] = {}

    def call(i: int) -> None:
        with httpx.Client() as client:
            barrier.wait()
            r = client.post(f"{url}/v1/embeddings", json={"input": [TEXTS[i % 4]]}, headers=AUTH, timeout=30)
            results[i] = r.json()["data"][0]["embedding"]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = embedder.encode(TEXTS)
    for i in range(n):
        np.testing.assert_allclose(results[i], expected[i % 4], atol=1e-5)
    stats = app.state.batcher.stats
    assert stats.max_requests_per_batch > 1, list(stats.recent)
    assert any(len(b) > 1 for b in stats.recent)


def test_unknown_route_gets_json_error(server):
    url, _ = server
    r = httpx.get(f"{url}/v1/nothing", headers=AUTH, timeout=TIMEOUT)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert httpx.get(f"{url}/v1/embeddings", headers=AUTH, timeout=TIMEOUT).status_code == 405


def test_load_model_picks_run_folder_or_base(tiny_llama, tmp_path):
    from embedtune.serving import load_model

    emb = Embedder.from_pretrained(str(tiny_llama), device="cpu", pooling="mean")
    emb.save(tmp_path / "run")
    loaded, name = load_model(str(tmp_path / "run"), device="cpu")
    assert loaded.pooling == "mean" and name == "run"
    loaded, name = load_model(str(tiny_llama), device="cpu")
    assert loaded.pooling == "last" and name == str(tiny_llama)


def test_cli_serve_parses_and_builds_app(tiny_llama, monkeypatch):
    from embedtune import cli, serving

    seen = {}
    monkeypatch.setattr(serving, "serve", lambda app, host, port, log_level: seen.update(app=app, host=host, port=port))
    monkeypatch.setenv("EMBEDTUNE_API_KEY", "from-env")
    assert cli.main(["serve", str(tiny_llama), "--port", "8123", "--max-batch-size", "4", "--device", "cpu"]) == 0
    assert (seen["host"], seen["port"]) == ("127.0.0.1", 8123)
    from starlette.testclient import TestClient

    with TestClient(seen["app"]) as client:
        assert client.post("/v1/embeddings", json={"input": "dog"}).status_code == 401
        r = client.post("/v1/embeddings", json={"input": "dog"}, headers={"Authorization": "Bearer from-env"})
        assert r.status_code == 200 and r.json()["model"] == str(tiny_llama)


def test_least_cost_chunks_cover_every_row_once_at_least_cost():
    import random

    from embedtune.batching import least_cost_chunks

    def cost(chunks, lengths, per_pass):
        return sum(per_pass + len(c) * max(lengths[i] for i in c) for c in chunks)

    rng = random.Random(0)
    lengths = [rng.randint(3, 60) for _ in range(100)]
    chunks = least_cost_chunks(lengths, 32, pass_cost=48)
    assert sorted(i for c in chunks for i in c) == list(range(100))
    assert all(1 <= len(c) <= 32 for c in chunks)
    order = sorted(range(100), key=lambda i: -lengths[i])
    fixed = [order[i : i + 32] for i in range(0, 100, 32)]  # fewest passes, most padding
    singles = [[i] for i in order]  # no padding, most passes
    assert cost(chunks, lengths, 48) <= min(cost(fixed, lengths, 48), cost(singles, lengths, 48))
    # equal lengths: padding costs nothing, so the fewest passes the size limit allows
    assert sorted(len(c) for c in least_cost_chunks([5] * 70, 32)) == [6, 32, 32]
    # a free pass means no padding at all; a costly one means full passes
    assert all(len({lengths[i] for i in c}) == 1 for c in least_cost_chunks(lengths, 32, pass_cost=0))
    assert len(least_cost_chunks(lengths, 32, pass_cost=10**6)) == 4
    assert least_cost_chunks([], 8) == []


def test_plan_passes_packs_short_mixed_texts_and_pads_long_similar_ones():
    from embedtune.batching import plan_passes

    mixed = [3, 40, 7, 12, 25, 5, 9, 31] * 2
    packed, runs = plan_passes(mixed, 32, attention_tokens=3000, packing=True)
    assert packed and sorted(i for r in runs for i in r) == list(range(16))
    # 32 texts of 500 tokens: packed, each would go alone (attention over each other is dear); one
    # padded pass has no padding to waste and each row attends only to itself
    assert plan_passes([500] * 32, 32, attention_tokens=3000, packing=True) == (False, [list(range(32))])
    assert plan_passes(mixed, 32, attention_tokens=3000, packing=False)[0] is False


def test_a_failing_packed_pass_falls_back_to_padded_passes(embedder, monkeypatch, caplog):
    from embedtune.batching import MicroBatcher

    batcher = MicroBatcher(embedder)
    assert batcher.packing
    rows = embedder.text_tokenizer.ids(TEXTS)

    def boom(rows, normalize=None):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(batcher.packer, "encode", boom)
    with caplog.at_level("WARNING"):
        got = batcher.embed_batch(rows)
    assert "padded passes" in caplog.text
    np.testing.assert_allclose(got, embedder.encode_ids(rows), atol=1e-6)


def test_server_packs_batches_and_can_be_told_not_to(embedder, server):
    url, app = server
    assert app.state.batcher.packing and httpx.get(f"{url}/health", timeout=TIMEOUT).json()["packing"] is True
    plain = create_app(embedder, model_name="tiny", packing=False)
    assert plain.state.batcher.packing is False
    with running_server(plain) as plain_url:
        assert httpx.get(f"{plain_url}/health", timeout=TIMEOUT).json()["packing"] is False
        r = httpx.post(f"{plain_url}/v1/embeddings", json={"input": TEXTS}, timeout=TIMEOUT)
    got = np.array([d["embedding"] for d in r.json()["data"]])
    np.testing.assert_allclose(got, embedder.encode(TEXTS), atol=1e-5)


def test_autocast_serving_matches_autocast_encode(tiny_llama):
    from embedtune.serving import load_model

    fast, name = load_model(str(tiny_llama), device="cpu", autocast="bf16")
    assert fast.autocast == "bf16"
    app = create_app(fast, model_name=name)
    with running_server(app) as url:
        assert httpx.get(f"{url}/health", timeout=TIMEOUT).json()["autocast"] == "bf16"
        r = httpx.post(f"{url}/v1/embeddings", json={"input": TEXTS}, timeout=TIMEOUT)
    got = np.array([d["embedding"] for d in r.json()["data"]])
    # the server packed the request: compare with the same packed pass in process (bf16 results depend on
    # the shapes of the products, so a padded pass may differ in the last bits)
    np.testing.assert_allclose(got, PackedEncoder(fast).encode(fast.text_tokenizer.ids(TEXTS)), atol=1e-6)
    np.testing.assert_allclose(got, fast.encode(TEXTS), atol=1e-2)
    fast.autocast = None
    assert np.abs(got - fast.encode(TEXTS)).max() > 1e-6  # the server really ran in bf16
