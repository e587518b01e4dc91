"""Serving the MCP server over HTTP (Streamable HTTP, or the older SSE) safely by default.

It binds 127.0.0.1 by default. On every loopback bind (127.0.0.0/8, ::1, localhost) the SDK's
DNS-rebinding protection only accepts the ``Host`` and ``Origin`` this very address and port are reached
by: a web page whose own name was made to resolve to 127.x can then not drive the server from the
user's browser. ``FLUX_MCP_HTTP_TOKEN`` makes every request need ``Authorization: Bearer <token>``, and
binding any other address without a token is refused: an open image server on a network spends the
owner's fal credit for anyone who finds it. There the token is the protection, and the Host is not
checked: a browser never sends the token on its own, so a rebound page cannot use the server, while the
names a network server is reached by (DNS names, proxies) are not knowable here.

For a team, the ``FLUX_MCP_OAUTH_*`` settings make the server an OAuth resource server instead: every
request needs a JWT from the configured issuer (see ``_oauth``), whose subject is the user (see
``_identity``). The two are exclusive (the settings refuse both at once): the static token stands for
one person, and a token that is not a verified JWT must not become a user of a shared server.

With ``FLUX_MCP_USER_KEYS=on`` the page where users enter their own fal key is served at ``/keys``,
outside the token check: a browser has no token, and the page takes the ticket of its link instead
(see ``_key_page``).

The web gallery is served at ``/gallery`` beside the MCP endpoint, behind the same token and checks
(see ``fal_flux_mcp.gallery._web`` for how a browser presents the token). Under OAuth it is not served:
it shows every job, and a browser has no JWT to show.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import threading
from collections.abc import Awaitable, Callable
from typing import Literal

import uvicorn
from mcp.server.transport_security import TransportSecuritySettings
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from fal_flux_mcp.server._app import FluxServer
from fal_flux_mcp.server._user_keys import KEY_PAGE_PATH

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


def loopback_security(host: str, port: int | None) -> TransportSecuritySettings:
    """DNS-rebinding protection for a loopback bind: the ``Host``/``Origin`` values it is reached by.

    Only names that reach this address count: ``localhost`` for 127.0.0.1 and ::1 (and both of those
    for ``localhost``), never for 127.0.0.2, which no name but itself reaches. Without a ``port`` (an
    app built before its socket is bound) any port of those names is accepted, as the SDK does.
    """
    address = host.strip("[]")
    if address == "localhost":
        names = ["localhost", "127.0.0.1", "[::1]"]
    elif address in ("127.0.0.1", "::1"):
        names = [f"[{address}]" if ":" in address else address, "localhost"]
    else:
        names = [f"[{address}]" if ":" in address else address]
    ports = [str(port)] if port else ["*"]  # 0: the OS picks the port, unknown here
    hosts = [f"{name}:{p}" for name in names for p in ports]
    if port == 80:  # browsers leave the default port out of Host and Origin
        hosts += names
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=hosts,
        allowed_origins=[f"http://{allowed}" for allowed in hosts],
    )


def http_app(
    server: FluxServer,
    transport: HttpTransport,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    stopping: threading.Event | None = None,
) -> ASGIApp:
    """The ASGI app for ``transport``, behind the bearer check when a token is configured.

    ``port`` is the port it will be served on, so that only that port's ``Host`` passes on loopback;
    ``stopping``, set when the server is asked to stop, ends the gallery's live-update streams.
    """
    settings = server.flux_settings
    token = settings.http_token.get_secret_value() if settings.http_token else None
    loopback = is_loopback(host)
    if not token and not settings.oauth and not loopback:
        raise UnsafeBindError(
            f"Refusing to serve on {host} without a token: anyone who can reach it could spend your fal "
            "credit. Set FLUX_MCP_HTTP_TOKEN (or the FLUX_MCP_OAUTH_* settings), or bind 127.0.0.1."
        )
    if settings.oauth:
        from fal_flux_mcp.server._oauth import JwtVerifier, auth_settings, resource_url

        origin = f"http://{f'[{host}]' if ':' in host else host}" + (f":{port}" if port else "")
        path = "/sse" if transport == "sse" else "/mcp"
        server.require_oauth(
            JwtVerifier(settings), auth_settings(settings, resource_url(settings, origin, path))
        )
    security = (
        loopback_security(host, port)
        if loopback
        else TransportSecuritySettings(enable_dns_rebinding_protection=False)
    )
    if transport == "sse":
        app: ASGIApp = server.sse_app(host=host, transport_security=security)
    else:
        app = server.streamable_http_app(host=host, transport_security=security)
    from fal_flux_mcp.gallery._data import JobsSource
    from fal_flux_mcp.gallery._web import gallery_app

    source = JobsSource(settings, lambda: server.state.jobs if server.state else None)
    gallery = no_gallery if settings.oauth else gallery_app(source, security, token, stopping)
    served: ASGIApp = WithGallery(BearerTokenMiddleware(app, token) if token else app, gallery, source.aclose)
    if settings.user_keys:
        from fal_flux_mcp.server._key_page import KeyPage

        page = KeyPage(lambda: server.state.jobs.user_keys if server.state else None)
        served = WithKeyPage(served, page)
    return served


async def no_gallery(scope: Scope, receive: Receive, send: Send) -> None:
    """The gallery's place under OAuth: a browser carries no access token, so whose work to show is unknown."""
    if scope["type"] == "http":
        text = (
            "The web gallery is not served when OAuth is on: a browser carries no access token, so it cannot "
            "tell whose images to show. The open_gallery tool shows each user their own."
        )
        await PlainTextResponse(text, status_code=404)(scope, receive, send)


class WithGallery:
    """``/gallery`` and below to the gallery (which checks its own token), the rest to the MCP app.

    ``close`` runs when the app's lifespan ends: what the gallery opened of its own is closed with it.
    """

    def __init__(self, app: ASGIApp, gallery: ASGIApp, close: Callable[[], Awaitable[None]]) -> None:
        self.app = app
        self.gallery = gallery
        self._close = close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path == "/gallery" or path.startswith("/gallery/"):
            await self.gallery(scope, receive, send)
        elif scope["type"] == "lifespan":
            try:
                await self.app(scope, receive, send)
            finally:
                await self._close()
        else:
            await self.app(scope, receive, send)


class WithKeyPage:
    """``/keys`` to the users' key page (its links carry their own ticket), the rest to ``app``."""

    def __init__(self, app: ASGIApp, page: ASGIApp) -> None:
        self.app = app
        self.page = page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path") == KEY_PAGE_PATH:
            await self.page(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def serve_http(server: FluxServer, transport: HttpTransport, *, host: str, port: int) -> None:
    """Serve until interrupted (blocking)."""
    from fal_flux_mcp.gallery._web import StoppingServer

    stopping = threading.Event()
    app = http_app(server, transport, host=host, port=port, stopping=stopping)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    StoppingServer(config, stopping).run()  # a Ctrl-C it stopped on is re-raised, as by uvicorn.run
