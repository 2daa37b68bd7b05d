"""An OpenAI-compatible embeddings server: ``POST /v1/embeddings``, ``GET /v1/models``, ``GET /health``.

Every vector database and RAG framework speaks OpenAI's embeddings schema, so an embedtune model behind
this server plugs into them unchanged. Requests are validated and tokenized on the event loop (one
thread: fast tokenizers must not be shared across threads), then embedded by a
:class:`~embedtune.batching.MicroBatcher` that joins concurrent requests into one forward pass.

Errors use OpenAI's body ``{"error": {"message", "type", "param", "code"}}``: 400 malformed JSON,
401 missing or wrong API key, 404 unknown model or route, 413 too many inputs, 422 wrong types, empty
input or an input over the token limit (named by index; truncation only when asked), 500 model failure.
FastAPI and uvicorn are the ``serve`` extra and are imported only here.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import os
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .batching import MicroBatcher
from .models.embedder import CONFIG_NAME, Embedder

SERVE_INSTALL_HINT = "pip install 'embedtune[serve]' (fastapi and uvicorn)"
API_KEY_ENV = "EMBEDTUNE_API_KEY"


class ApiError(Exception):
    """An error answered with an OpenAI-style JSON body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _import_fastapi():
    try:
        import fastapi
        from fastapi import responses
    except ImportError as exc:
        raise ImportError(f"the embeddings server needs fastapi and uvicorn: {SERVE_INSTALL_HINT}") from exc
    return fastapi, responses


# ---- request parsing ------------------------------------------------------------------------------------
def parse_request(body: bytes, *, model_name: str, dim: int, max_inputs: int) -> dict[str, Any]:
    """Validate an embeddings request body; returns ``texts``, ``encoding_format``, ``dimensions``, ``truncate``.

    Raises:
        ApiError: 400 for malformed JSON, 404 for another model, 413 for too many inputs, 422 otherwise.
    """
    try:
        req = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(req, dict):
        raise ApiError(422, "the request body must be a JSON object", code="invalid_type")
    model = req.get("model", model_name)
    if not isinstance(model, str):
        raise ApiError(422, "'model' must be a string", param="model", code="invalid_type")
    if model != model_name:
        raise ApiError(404, f"model {model!r} is not served here; this server serves {model_name!r}",
                       param="model", code="model_not_found")
    if "input" not in req:
        raise ApiError(422, "'input' is required: a string or a list of strings", param="input",
                       code="missing_required_parameter")
    texts = req["input"]
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list):
        raise ApiError(422, f"'input' must be a string or a list of strings, not {type(texts).__name__}",
                       param="input", code="invalid_type")
    if not texts:
        raise ApiError(422, "'input' is an empty list; send at least one string", param="input", code="empty_input")
    if len(texts) > max_inputs:
        raise ApiError(413, f"'input' has {len(texts)} items; this server takes at most {max_inputs} per request",
                       param="input", code="too_many_inputs")
    for i, t in enumerate(texts):
        if isinstance(t, (int, list)) and not isinstance(t, bool):
            raise ApiError(422, f"input[{i}] is a token-id array; this server takes text only, send strings",
                           param=f"input[{i}]", code="token_ids_not_supported")
        if not isinstance(t, str):
            raise ApiError(422, f"input[{i}] is a {type(t).__name__}; expected a string", param=f"input[{i}]",
                           code="invalid_type")
        if not t.strip():
            raise ApiError(422, f"input[{i}] is empty or whitespace-only", param=f"input[{i}]", code="empty_input")
    fmt = req.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise ApiError(422, f"'encoding_format' must be 'float' or 'base64', not {fmt!r}", param="encoding_format",
                       code="invalid_value")
    dims = req.get("dimensions")
    if dims is not None and (not isinstance(dims, int) or isinstance(dims, bool) or not 1 <= dims <= dim):
        raise ApiError(422, f"'dimensions' must be an integer from 1 to {dim} (this model's size), not {dims!r}",
                       param="dimensions", code="invalid_value")
    truncate = req.get("truncate", False)
    if not isinstance(truncate, bool):
        raise ApiError(422, "'truncate' must be true or false", param="truncate", code="invalid_type")
    return {"texts": texts, "encoding_format": fmt, "dimensions": dims, "truncate": truncate}


def tokenize_checked(embedder: Embedder, texts: list[str], max_tokens: int, truncate: bool) -> list[list[int]]:
    """Id rows (prompt applied, EOS last) through the Embedder's own tokenizer, within ``max_tokens``.

    With ``truncate``, over-long texts are cut like ``Embedder.encode`` cuts them (EOS and a prompt's suffix
    kept); without it, rows are made with a cap one above the limit, and a row that reaches it is refused.

    Raises:
        ApiError: 422 naming the first input over the limit (when not truncating).
    """
    tt = embedder.text_tokenizer
    if truncate:
        return tt.ids(texts, max_tokens)
    rows = tt.ids(texts, max_tokens + 1)
    for i, row in enumerate(rows):
        if len(row) > max_tokens:
            raise ApiError(422, f"input[{i}] is longer than {max_tokens} tokens (prompt and EOS included); "
                           "shorten it or send \"truncate\": true", param=f"input[{i}]", code="input_too_long")
    return rows


def format_vectors(vectors: np.ndarray, *, dimensions: int | None, normalize: bool, encoding_format: str) -> list:
    """Matryoshka-style truncation to ``dimensions`` (re-normalized when the model normalizes), then the
    JSON form: lists of floats, or base64 of little-endian float32 bytes."""
    if dimensions is not None and dimensions < vectors.shape[1]:
        vectors = vectors[:, :dimensions]  # (N, d)
        if normalize:
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    vectors = np.ascontiguousarray(vectors, dtype="<f4")
    if encoding_format == "base64":
        return [base64.b64encode(v.tobytes()).decode("ascii") for v in vectors]
    return vectors.tolist()


# ---- the app ------------------------------------------------------------------------------------------
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
) -> Any:
    """Build the FastAPI app (the micro-batching worker runs while the app runs: lifespan start/stop).

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

    Returns:
        A ``fastapi.FastAPI``; ``app.state.batcher`` is its :class:`~embedtune.batching.MicroBatcher`.
    """
    fastapi, responses = _import_fastapi()
    from starlette.exceptions import HTTPException as StarletteHTTPException

    max_tokens = max_tokens_per_input or embedder.max_length
    if max_tokens < 2:
        raise ValueError(f"max_tokens_per_input must be at least 2 (text + EOS), got {max_tokens}")
    batcher = MicroBatcher(embedder, max_batch_size=max_batch_size, batch_timeout_ms=batch_timeout_ms,
                           packing=packing)
    created = int(time.time())
    expected_auth = f"Bearer {api_key}".encode() if api_key else None

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        try:
            yield
        finally:
            batcher.close()

    app = fastapi.FastAPI(title="embedtune embeddings", lifespan=lifespan)
    app.state.batcher = batcher

    def error_response(err: ApiError):
        return responses.JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        return error_response(ApiError(exc.status_code, str(exc.detail), code="not_found"
                                       if exc.status_code == 404 else None))

    @app.exception_handler(Exception)
    async def _server_error(request, exc):
        return error_response(ApiError(500, f"internal error: {type(exc).__name__}: {exc}", type_="server_error"))

    def check_key(request) -> None:
        if expected_auth is None:
            return
        got = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(got, expected_auth):
            raise ApiError(401, "missing or wrong API key (send 'Authorization: Bearer <key>')",
                           code="invalid_api_key")

    # Plain Starlette routes: the handlers parse the body themselves (exact OpenAI-style errors, no
    # per-request model validation overhead).
    async def health(request):
        s = batcher.stats
        return responses.JSONResponse({
            "status": "ok", "model": model_name, "dimensions": embedder.dim, "queued": batcher.pending,
            "batches": s.batches, "embedded": s.rows, "max_requests_per_batch": s.max_requests_per_batch,
            "packed_batches": s.packed_batches,
            "forward_seconds": round(s.forward_seconds, 3), "batch_timeout_ms": batcher.batch_timeout * 1000,
            "autocast": getattr(embedder, "autocast", None), "packing": batcher.packing})

    async def models(request):
        check_key(request)
        return responses.JSONResponse({"object": "list", "data": [
            {"id": model_name, "object": "model", "created": created, "owned_by": "embedtune"}]})

    async def embeddings(request):
        check_key(request)
        req = parse_request(await request.body(), model_name=model_name, dim=embedder.dim, max_inputs=max_inputs)
        rows = tokenize_checked(embedder, req["texts"], max_tokens, truncate or req["truncate"])
        vectors = await asyncio.wrap_future(batcher.submit(rows))  # (N, D)
        data = format_vectors(vectors, dimensions=req["dimensions"], normalize=embedder.normalize,
                              encoding_format=req["encoding_format"])
        tokens = sum(len(r) for r in rows)
        body = {"object": "list",
                "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(data)],
                "model": model_name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        return responses.Response(json.dumps(body, separators=(",", ":")), media_type="application/json")

    app.add_route("/health", health, methods=["GET"])
    app.add_route("/v1/models", models, methods=["GET"])
    app.add_route("/v1/embeddings", embeddings, methods=["POST"])
    return app


# ---- running it ---------------------------------------------------------------------------------------
def load_model(spec: str | None = None, **options: Any) -> tuple[Embedder, str]:
    """The Embedder to serve and its default name: a folder holding ``embedtune.json`` (a run or an export)
    is loaded with :meth:`Embedder.load`, anything else (hub id, checkpoint folder, .gguf, ``default``)
    with :meth:`Embedder.from_pretrained`."""
    spec = spec or "default"
    path = Path(spec).expanduser()
    if path.is_dir() and (path / CONFIG_NAME).is_file():
        return Embedder.load(path, **options), path.resolve().name
    return Embedder.from_pretrained(spec, **options), "embedtune-default" if spec == "default" else spec


def resolve_api_key(api_key: str | None) -> str | None:
    """The API key given, else ``$EMBEDTUNE_API_KEY``, else None (no key required)."""
    return api_key or os.environ.get(API_KEY_ENV) or None


def serve(app: Any, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Run the app with uvicorn until interrupted (localhost only unless ``host`` says otherwise)."""
    try:
        import uvicorn
    except ImportError as exc:
        raise ImportError(f"the embeddings server needs uvicorn: {SERVE_INSTALL_HINT}") from exc
    uvicorn.run(app, host=host, port=port, log_level=log_level)


@contextmanager
def running_server(app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> Iterator[str]:
    """Run the app with uvicorn in a background thread; yields its base URL and stops it on exit.

    ``port=0`` picks a free port (the socket is bound before the server starts, so there is no race).
    """
    import socket
    import threading

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_keep_alive=30))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="embedtune-server", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the embeddings server did not start")
            time.sleep(0.01)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
