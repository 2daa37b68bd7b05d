"""An OpenAI-compatible embeddings server: ``POST /v1/embeddings``, ``GET /v1/models``, ``GET /health``.

Every vector database and RAG framework speaks OpenAI's embeddings schema, so an embedtune model behind
this server plugs into them unchanged. Concurrent requests are embedded together by a
:class:`~embedtune.batching.MicroBatcher`, which shares each forward pass fairly among them.

Errors use OpenAI's body ``{"error": {"message", "type", "param", "code"}}``: 400 malformed JSON (or invalid
UTF-8, numbers of over 4,300 digits, nesting too deep), 401 missing or wrong API key, 404 unknown model or
route, 408 a body that did not arrive within the client timeout, 413 a body over ``max_request_bytes`` or
too many inputs, 422 wrong types, empty input, text that is not valid Unicode, or an input over the token
limit (named by index; truncation only when asked), 503 overloaded (with ``Retry-After``) or shutting down,
500 only when the model itself fails. No input yields a 500, and no error closes a keep-alive connection
except 408, 503 ``shutting_down`` and a 413 sent before a body announced with ``Expect: 100-continue``.

- :mod:`.inputs`: parsing, validation, text sanitation and the character bound, tokenizing within limits.
- :mod:`.guard`: :class:`ServeLimits`, the capped body reader, admission (back-pressure) and shutdown.
- :mod:`.app`: :func:`create_app`, the routes and where each step runs.
- :mod:`.run`: loading the model, uvicorn with the limits (:func:`serve`, :func:`running_server`).

FastAPI and uvicorn are the ``serve`` extra and are imported only when an app is built or run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .app import SERVE_INSTALL_HINT, create_app
    from .guard import Admission, ServeLimits
    from .inputs import ApiError, TextLimits, format_vectors, parse_request, tokenize_checked
    from .run import API_KEY_ENV, load_model, make_server, resolve_api_key, running_server, serve

_LAZY = {
    "SERVE_INSTALL_HINT": ".app", "create_app": ".app",
    "Admission": ".guard", "ServeLimits": ".guard",
    "ApiError": ".inputs", "TextLimits": ".inputs", "format_vectors": ".inputs", "parse_request": ".inputs",
    "tokenize_checked": ".inputs",
    "API_KEY_ENV": ".run", "load_model": ".run", "make_server": ".run", "resolve_api_key": ".run",
    "running_server": ".run", "serve": ".run",
}
__all__ = [
    "API_KEY_ENV", "SERVE_INSTALL_HINT", "Admission", "ApiError", "ServeLimits", "TextLimits", "create_app",
    "format_vectors", "load_model", "make_server", "parse_request", "resolve_api_key", "running_server", "serve",
    "tokenize_checked",
]


def __getattr__(name: str):
    # Lazy, like the package's own: the CLI's parser reads ServeLimits without loading torch.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
