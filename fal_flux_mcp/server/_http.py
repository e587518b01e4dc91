"""Serving the MCP server over HTTP (Streamable HTTP, or the older SSE) safely by default.

It binds 127.0.0.1 with the SDK's DNS-rebinding protection. ``FLUX_MCP_HTTP_TOKEN`` makes every request
need ``Authorization: Bearer <token>``, and binding any other address without a token is refused: an
open image server on a network spends the owner's fal credit for anyone who finds it.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from typing import Literal

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from fal_flux_mcp.server._app import FluxServer

HttpTransport = Literal["sse", "streamable-http"]


class UnsafeBindError(Exception):
    """Refusing to serve HTTP on a non-loopback address without a bearer token."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class BearerTokenMiddleware:
    """Answers 401 to any HTTP request without the right ``Authorization: Bearer`` header."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        if hmac.compare_digest(given, self._expected):
            await self.app(scope, receive, send)
            return
        body = json.dumps(
            {
                "error": "unauthorized",
                "error_description": "Send Authorization: Bearer <FLUX_MCP_HTTP_TOKEN>.",
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="fal-flux-mcp"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def http_app(server: FluxServer, transport: HttpTransport, *, host: str = "127.0.0.1") -> ASGIApp:
    """The ASGI app for ``transport``, behind the bearer check when a token is configured."""
    token = server.flux_settings.http_token.get_secret_value() if server.flux_settings.http_token else None
    if not token and not is_loopback(host):
        raise UnsafeBindError(
            f"Refusing to serve on {host} without a token: anyone who can reach it could spend your fal "
            "credit. Set FLUX_MCP_HTTP_TOKEN, or bind 127.0.0.1."
        )
    if transport == "sse":
        app: ASGIApp = server.sse_app(host=host)
    else:
        app = server.streamable_http_app(host=host)
    return BearerTokenMiddleware(app, token) if token else app


def serve_http(server: FluxServer, transport: HttpTransport, *, host: str, port: int) -> None:
    """Serve until interrupted (blocking)."""
    app = http_app(server, transport, host=host)
    uvicorn.run(app, host=host, port=port, log_level="warning", lifespan="on")
