"""Serving something on a free loopback port from a test, the way httpx's own tests do, always stopped."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import uvicorn
from starlette.types import ASGIApp


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()


def bind_free_port(host: str = "127.0.0.1") -> socket.socket:
    """A socket bound to a free port of ``host``, for an app that must know its port before serving."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.bind((host, 0))
    return sock


@contextmanager
def serve(app: ASGIApp, sock: socket.socket | None = None) -> Iterator[str]:
    """Run ``app`` in a thread on ``sock`` (default: a free port of 127.0.0.1); yields its origin."""
    sock = sock or bind_free_port()
    host, port = sock.getsockname()[:2]
    server = _Server(
        uvicorn.Config(app, lifespan="on", log_level="warning", timeout_graceful_shutdown=1, ws="none")
    )
    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(server.serve(sockets=[sock]))
        except BaseException as exc:  # surfaced by the wait below
            failure.append(exc)
        finally:
            server.ready.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        if not server.ready.wait(10) or failure or not server.started:
            raise RuntimeError(f"test server did not start: {failure!r}")
        yield f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@contextmanager
def serve_handler(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Run a stdlib request handler on 127.0.0.1 in a thread (a foreign host, a webhook receiver)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
