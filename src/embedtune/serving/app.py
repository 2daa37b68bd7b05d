"""The FastAPI app: ``POST /v1/embeddings``, ``GET /v1/models``, ``GET /health``, and where each step runs.

A request to ``/v1/embeddings`` goes through, in order:

1. the API key (401), compared in constant time; a shutting-down server answers 503 here;
2. the body, read with a size cap and a deadline (413, 408; :func:`~embedtune.serving.guard.read_body`);
3. parsing, validation and the character bound (4xx; :mod:`~embedtune.serving.inputs`), on the event loop
   for small bodies and in a worker thread for large ones;
4. admission (503 with ``Retry-After`` when the queue is full; :class:`~embedtune.serving.guard.Admission`);
5. tokenizing in a thread of its own (fast tokenizers must not be shared across threads), in chunks of a
   few thousand characters, so a large request never holds up the event loop or other requests' tokens;
6. embedding by the :class:`~embedtune.batching.MicroBatcher`, which shares each forward pass fairly
   among the requests in progress.

Each handler answers its own errors, so no exception reaches uvicorn: a 500 (the model failed; never the
input) is a JSON body like any other error and the connection stays open.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from ..batching import MicroBatcher
from ..models.embedder import Embedder
from .guard import Admission, ServeLimits, read_body
from .inputs import ApiError, TextLimits, bound_texts, format_vectors, parse_request, tokenize_checked

log = logging.getLogger(__name__)

SERVE_INSTALL_HINT = "pip install 'embedtune[serve]' (fastapi and uvicorn)"
INLINE_BODY_BYTES = 64 * 1024  # larger bodies are parsed in a worker thread, off the event loop
TOKENIZE_CHUNK_CHARS = 32 * 1024  # characters per tokenizer call: tens of milliseconds at most
TOKENIZE_CHUNK_TEXTS = 64


def _import_fastapi():
    try:
        import fastapi
        from fastapi import responses
    except ImportError as exc:
        raise ImportError(f"the embeddings server needs fastapi and uvicorn: {SERVE_INSTALL_HINT}") from exc
    return fastapi, responses


def text_chunks(texts: list[str], max_chars: int = TOKENIZE_CHUNK_CHARS,
                max_texts: int = TOKENIZE_CHUNK_TEXTS) -> list[tuple[int, int]]:
    """``(start, end)`` spans of consecutive texts, each at most ``max_texts`` texts and about ``max_chars``
    characters (a single longer text is a span of its own)."""
    spans, start, chars = [], 0, 0
    for i, t in enumerate(texts):
        if i > start and (chars + len(t) > max_chars or i - start >= max_texts):
            spans.append((start, i))
            start, chars = i, 0
        chars += len(t)
    if start < len(texts):
        spans.append((start, len(texts)))
    return spans


def create_app(
    embedder: Embedder,
    *,
    model_name: str,
    api_key: str | None = None,
    max_inputs: int = 2048,
    max_tokens_per_input: int | None = None,
    max_batch_size: int = 32,
    batch_timeout_ms: float = 2.0,
    truncate: bool = False,
    packing: bool | None = None,
    limits: ServeLimits | None = None,
) -> Any:
    """Build the FastAPI app (the micro-batching worker and the tokenizer thread run while the app runs).

    Args:
        embedder: the model to serve.
        model_name: the id clients send as ``model`` and ``/v1/models`` lists.
        api_key: when set, ``/v1/*`` requires ``Authorization: Bearer <api_key>`` (401 otherwise).
        max_inputs: inputs per request (413 above).
        max_tokens_per_input: tokens per input, prompt and EOS included (422 above); default the
            Embedder's ``max_length``.
        max_batch_size: rows per forward pass.
        batch_timeout_ms: how long the worker waits to fill a batch after the first request.
        truncate: truncate over-long inputs for every request instead of answering 422.
        packing: allow packed passes (a batch's texts in one sequence, no padding; taken per batch when
            cheaper). None: when the model supports it; see :class:`~embedtune.batching.MicroBatcher`.
        limits: request size, queue, timeouts and connections (:class:`ServeLimits`; defaults when None).

    Returns:
        A ``fastapi.FastAPI``; ``app.state`` holds ``batcher`` (the
        :class:`~embedtune.batching.MicroBatcher`), ``admission``, ``limits`` and ``text_limits``.
    """
    # One piece on purpose: the handlers below are closures over this app's batcher, admission, limits and
    # options; split out, each would take them all as arguments, and the routes would no longer read
    # together with the state they share.
    fastapi, responses = _import_fastapi()
    from starlette.exceptions import HTTPException as StarletteHTTPException

    limits = limits or ServeLimits()
    text_limits = TextLimits.for_tokenizer(embedder.text_tokenizer.tokenizer,
                                           max_tokens_per_input or embedder.max_length)
    batcher = MicroBatcher(embedder, max_batch_size=max_batch_size, batch_timeout_ms=batch_timeout_ms,
                           packing=packing)
    admission = Admission(limits.max_queued_texts, rate=lambda: _rate(batcher))
    created = int(time.time())
    expected_auth = f"Bearer {api_key}".encode() if api_key else None

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        app.state.tokenizing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedtune-tokenize")
        try:
            yield
        finally:
            app.state.tokenizing.shutdown(wait=True)
            batcher.close()

    app = fastapi.FastAPI(title="embedtune embeddings", lifespan=lifespan)
    app.state.batcher, app.state.admission = batcher, admission
    app.state.limits, app.state.text_limits = limits, text_limits

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        return _error_response(responses, ApiError(exc.status_code, str(exc.detail), code="not_found"
                                                   if exc.status_code == 404 else None))

    @app.exception_handler(Exception)
    async def _server_error(request, exc):  # outside the routes (they answer their own); a last resort
        return _error_response(responses, ApiError(500, f"internal error: {type(exc).__name__}", type_="server_error"))

    def check_key(request) -> None:
        if expected_auth is None:
            return
        got = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(got, expected_auth):  # constant time: the key cannot be guessed bytewise
            raise ApiError(401, "missing or wrong API key (send 'Authorization: Bearer <key>')",
                           code="invalid_api_key")

    def prepare(body: bytes) -> tuple[dict[str, Any], list[str]]:
        req = parse_request(body, model_name=model_name, dim=embedder.dim, max_inputs=max_inputs)
        return req, bound_texts(req["texts"], text_limits, truncate or req["truncate"])

    async def tokenize(texts: list[str], truncating: bool) -> list[list[int]]:
        loop = asyncio.get_running_loop()
        rows: list[list[int]] = []
        for start, end in text_chunks(texts):  # other requests' chunks queue in between
            rows += await loop.run_in_executor(app.state.tokenizing, tokenize_checked, embedder, texts[start:end],
                                               text_limits.max_tokens, truncating, start)
        return rows

    async def health(request):
        s = batcher.stats
        return responses.JSONResponse({
            "status": "shutting_down" if admission.shutting_down else "ok", "model": model_name,
            "dimensions": embedder.dim, "max_tokens_per_input": text_limits.max_tokens,
            "max_chars_per_input": text_limits.max_chars, "queued": batcher.pending, **admission.health(),
            "batches": s.batches, "embedded": s.rows, "max_requests_per_batch": s.max_requests_per_batch,
            "packed_batches": s.packed_batches,
            "forward_seconds": round(s.forward_seconds, 3), "batch_timeout_ms": batcher.batch_timeout * 1000,
            "autocast": getattr(embedder, "autocast", None), "packing": batcher.packing},
            status_code=503 if admission.shutting_down else 200)

    async def models(request):
        check_key(request)
        return responses.JSONResponse({"object": "list", "data": [
            {"id": model_name, "object": "model", "created": created, "owned_by": "embedtune"}]})

    async def embeddings(request):
        check_key(request)
        admission.check_open()
        try:
            body = await read_body(request, limits.max_request_bytes, limits.client_timeout)
        except ApiError as err:
            raise admission.refuse(err) from None
        if len(body) > INLINE_BODY_BYTES:
            req, texts = await asyncio.get_running_loop().run_in_executor(None, prepare, body)
        else:
            req, texts = prepare(body)
        with admission.hold(len(texts)):
            rows = await tokenize(texts, truncate or req["truncate"])
            vectors = await asyncio.wrap_future(batcher.submit(rows))  # (N, D)
        data = format_vectors(vectors, dimensions=req["dimensions"], normalize=embedder.normalize,
                              encoding_format=req["encoding_format"])
        tokens = sum(len(r) for r in rows)
        body = {"object": "list",
                "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(data)],
                "model": model_name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        return responses.Response(json.dumps(body, separators=(",", ":")), media_type="application/json")

    app.add_route("/health", health, methods=["GET"])
    app.add_route("/v1/models", _guarded(models, responses), methods=["GET"])
    app.add_route("/v1/embeddings", _guarded(embeddings, responses), methods=["POST"])
    return app


def _rate(batcher: MicroBatcher) -> float:
    """Texts embedded per second of forward passes so far (0 before the first)."""
    s = batcher.stats
    return s.rows / s.forward_seconds if s.forward_seconds > 0 else 0.0


def _error_response(responses: Any, err: ApiError) -> Any:
    return responses.JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _guarded(handler: Callable[[Any], Awaitable[Any]], responses: Any) -> Callable[[Any], Awaitable[Any]]:
    """The handler, answering its own errors: an :class:`ApiError` as its status, anything else as a JSON
    500 (logged). Nothing is re-raised to uvicorn, which would drop the connection."""

    async def run(request):
        try:
            return await handler(request)
        except ApiError as err:
            return _error_response(responses, err)
        except Exception as exc:  # noqa: BLE001 - the model failed, not the input: 500, connection kept
            log.exception("the embeddings request failed")
            return _error_response(responses, ApiError(500, f"internal error: {type(exc).__name__}: {exc}",
                                                       type_="server_error"))

    return run
