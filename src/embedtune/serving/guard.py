"""What protects the server from its clients: limits, a capped body reader, and admission (back-pressure).

- :class:`ServeLimits` holds every limit (``embedtune serve`` sets them from its options).
- :func:`read_body` refuses an over-large body with 413 from its Content-Length, before reading it, or as
  soon as a streamed (chunked, or lying) body passes the cap, so at most the cap is ever held per request;
  a body that takes longer than the client timeout to arrive is 408, and the connection is closed.
- :class:`Admission` counts the texts admitted and not yet answered (being tokenized, queued or embedded).
  A request that would take them past ``max_queued_texts`` is answered 503 with ``Retry-After`` instead of
  queueing, so memory and latency stay bounded under any burst; a request alone is always admitted, however
  many texts it holds (within ``--max-inputs``). During shutdown every new request is 503 ``shutting_down``.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any

from .inputs import ApiError

MiB = 2**20


@dataclass(frozen=True)
class ServeLimits:
    """Limits of the embeddings server (the options of ``embedtune serve`` of the same names)."""

    max_request_bytes: int = field(default=4 * MiB, metadata={
        "help": "request bodies over this many bytes get 413, from Content-Length before the body is read, or "
                "as soon as a streamed body passes it"})
    max_queued_texts: int = field(default=512, metadata={
        "help": "texts admitted and not yet answered (raise it on a GPU, where the model drains a queue "
                "faster); a request that would pass it gets 503 with Retry-After (a request arriving "
                "when nothing is queued is always admitted)"})
    client_timeout: float = field(default=30.0, metadata={
        "help": "seconds a client may take to send a request's head, and then its body (408 and the "
                "connection closed after that)"})
    keep_alive_timeout: float = field(default=5.0, metadata={
        "help": "seconds an idle keep-alive connection stays open"})
    shutdown_timeout: float = field(default=30.0, metadata={
        "help": "on SIGTERM, seconds in-flight requests get to finish before they are cancelled"})
    max_connections: int = field(default=128, metadata={
        "help": "open connections; requests beyond it get 503 (bodies in memory stay under "
                "max_connections x max_request_bytes)"})

    def __post_init__(self) -> None:
        for f in fields(self):
            if not getattr(self, f.name) > 0:
                raise ValueError(f"{f.name} must be positive, got {getattr(self, f.name)}")


async def read_body(request: Any, limit: int, timeout: float) -> bytes:
    """The request body, at most ``limit`` bytes, within ``timeout`` seconds.

    Raises:
        ApiError: 413 ``request_too_large`` (from Content-Length, or while streaming); 408 ``client_timeout``
            (with ``Connection: close``: the rest of a stalled body is not waited for); 400 when the client
            went away mid-body.
    """
    from starlette.requests import ClientDisconnect

    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        # Not read at all; a client waiting for '100 Continue' never sends it, so do not keep the connection.
        close = {"Connection": "close"} if "100-continue" in request.headers.get("expect", "").lower() else None
        raise too_large(int(declared), limit, close)

    async def collect() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large(None, limit)
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(collect(), timeout)
    except asyncio.TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {timeout:g} s", code="client_timeout",
                       headers={"Connection": "close"}) from None
    except ClientDisconnect:
        raise ApiError(400, "the client disconnected before sending the whole body", code="client_disconnected",
                       headers={"Connection": "close"}) from None


def too_large(size: int | None, limit: int, headers: dict[str, str] | None = None) -> ApiError:
    said = f"{size:,} bytes" if size is not None else "more than that"
    return ApiError(413, f"the request body is {said}; this server takes at most {limit:,} bytes per request "
                    "(--max-request-bytes)", code="request_too_large", headers=headers)


class Admission:
    """Texts admitted and not yet answered, at most ``max_texts`` of them; refusals counted by code.

    Used from the event loop only (no locks). ``rate`` gives the texts embedded per second so far (0 before
    any), from which ``Retry-After`` estimates when the queue will have drained.
    """

    def __init__(self, max_texts: int, rate: Callable[[], float]) -> None:
        self.max_texts = max_texts
        self.rate = rate
        self.texts = 0
        self.requests = 0
        self.shutting_down = False
        self.refused: Counter[str] = Counter()

    def retry_after(self) -> int:
        """Seconds until the texts admitted now are likely answered (1 to 60)."""
        rate = self.rate()
        return min(60, max(1, math.ceil(self.texts / rate))) if rate > 0 else 1

    def refuse(self, err: ApiError) -> ApiError:
        """Count a refusal (413, 408, 503) under its code; returns it for raising."""
        self.refused[err.code or str(err.status)] += 1
        return err

    def begin_shutdown(self) -> None:
        """From now on every new request is refused (503 ``shutting_down``); admitted ones finish."""
        self.shutting_down = True

    def check_open(self) -> None:
        """Raises: ApiError 503 ``shutting_down`` (with ``Connection: close``) once shutdown has begun."""
        if self.shutting_down:
            raise self.refuse(ApiError(503, "the server is shutting down; retry on another instance",
                                       code="shutting_down", type_="server_error",
                                       headers={"Retry-After": "1", "Connection": "close"}))

    @contextmanager
    def hold(self, n: int) -> Iterator[None]:
        """Admit ``n`` texts for the duration of the block.

        Raises:
            ApiError: 503 ``shutting_down`` after SIGTERM; 503 ``overloaded`` with ``Retry-After`` when
                the texts would pass ``max_texts`` and others are already admitted.
        """
        self.check_open()
        if self.texts and self.texts + n > self.max_texts:
            wait = self.retry_after()
            raise self.refuse(ApiError(
                503, f"the server is overloaded: {self.texts} texts are waiting (at most {self.max_texts}); "
                f"retry in {wait} s", code="overloaded", type_="server_error", headers={"Retry-After": str(wait)}))
        self.texts += n
        self.requests += 1
        try:
            yield
        finally:
            self.texts -= n
            self.requests -= 1

    def health(self) -> dict[str, Any]:
        return {"queued_texts": self.texts, "max_queued_texts": self.max_texts, "in_flight_requests": self.requests,
                "refused": dict(self.refused)}
