"""Running the app: the model to serve, and uvicorn configured with the server's limits.

uvicorn closes idle keep-alive connections and, on SIGTERM, stops accepting connections and waits for
in-flight requests. Two things it does not do are added here:

- a deadline for each request's head (:func:`guarded_protocol`): uvicorn's keep-alive timer stops at a
  request's first byte, so a client that sends its head one byte at a time (or never finishes draining a
  refused body) would hold a connection forever;
- on SIGTERM, the app is told first (:class:`~embedtune.serving.guard.Admission.begin_shutdown`), so a
  request that still arrives on an open connection gets 503 ``shutting_down`` rather than new work, and
  ``/health`` says 503 to load balancers. Requests admitted before finish; after ``shutdown_timeout`` they
  are cancelled.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..models.embedder import CONFIG_NAME, Embedder
from .app import SERVE_INSTALL_HINT
from .guard import ServeLimits

API_KEY_ENV = "EMBEDTUNE_API_KEY"


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


def _import_uvicorn():
    try:
        import uvicorn
    except ImportError as exc:
        raise ImportError(f"the embeddings server needs uvicorn: {SERVE_INSTALL_HINT}") from exc
    return uvicorn


def guarded_protocol(head_timeout: float) -> type:
    """uvicorn's h11 protocol with a deadline of ``head_timeout`` seconds for each request's head.

    The deadline starts when the connection opens and when a response completes (it then also covers
    draining the unread rest of a refused body); a connection whose next request head has not fully
    arrived by then is closed."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        _deadline = None
        _deadline_cycle = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            if not self.transport.is_closing():
                self._arm()  # before: a pipelined request that super() starts must cancel it
            super().on_response_complete()

        def handle_events(self) -> None:
            super().handle_events()
            if self._deadline is not None and self.cycle is not self._deadline_cycle:  # a new request's head
                self._disarm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._deadline_cycle = self.cycle
            self._deadline = self.loop.call_later(head_timeout, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if self.cycle is self._deadline_cycle and not self.transport.is_closing():
                self.transport.close()

    return GuardedH11Protocol


def make_server(app: Any, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> Any:
    """A ``uvicorn.Server`` for the app with its :class:`ServeLimits` (head deadline, keep-alive timeout,
    connection limit, graceful shutdown); SIGTERM tells the app before uvicorn stops. The server is also
    ``app.state.server``."""
    uvicorn = _import_uvicorn()
    limits: ServeLimits = getattr(app.state, "limits", None) or ServeLimits()

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            admission = getattr(app.state, "admission", None)
            if admission is not None:
                admission.begin_shutdown()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            http=guarded_protocol(limits.client_timeout),
                            timeout_keep_alive=limits.keep_alive_timeout,
                            timeout_graceful_shutdown=limits.shutdown_timeout,
                            limit_concurrency=limits.max_connections)
    app.state.server = Server(config)
    return app.state.server


def serve(app: Any, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Run the app with uvicorn until SIGTERM or SIGINT (localhost only unless ``host`` says otherwise)."""
    make_server(app, host=host, port=port, log_level=log_level).run()


@contextmanager
def running_server(app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> Iterator[str]:
    """Run the app with uvicorn in a background thread, configured as :func:`serve` configures it; yields
    its base URL and stops it on exit. ``app.state.server.handle_exit(signal.SIGTERM, None)`` does what
    SIGTERM does to ``embedtune serve``.

    ``port=0`` picks a free port (the socket is bound before the server starts, so there is no race).
    """
    import socket
    import threading

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = make_server(app, host=host, port=port, log_level=log_level)
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
