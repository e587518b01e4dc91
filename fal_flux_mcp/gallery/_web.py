"""The web gallery as an ASGI app under ``/gallery``, behind the token and the Host/Origin checks.

The MCP endpoints take the token in an ``Authorization`` header, which a browser never sends on its
own. So the gallery also takes it once in the address (``/gallery?token=…``, the URL
``fal-flux-mcp gallery`` prints), answers with a cookie scoped to ``/gallery`` (HttpOnly,
SameSite=Strict) and sends the browser to the same address without it; every later request carries
the cookie. ``Host`` and ``Origin`` are checked as on the MCP endpoints, so a page elsewhere cannot
read the gallery through a rebound name.
"""

from __future__ import annotations

import hmac
import json
import threading
from collections.abc import AsyncIterator
from types import FrameType

import anyio
import uvicorn
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from starlette.applications import Starlette
from starlette.datastructures import URL
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from fal_flux_mcp.fal import FalError
from fal_flux_mcp.gallery import _data, _pages
from fal_flux_mcp.server._errors import UnknownJobError
from fal_flux_mcp.server._identity import LOCAL_USER
from fal_flux_mcp.server._images import sniff_content_type
from fal_flux_mcp.server._jobs import JobService
from fal_flux_mcp.server._resources import NoSuchImage, image_bytes

COOKIE = "fal_flux_gallery"
#: How often the live update looks for newly finished jobs in the journal (another process may write it).
POLL_SECONDS = 0.5
#: A comment line this often keeps proxies and browsers from closing a quiet event stream.
KEEPALIVE_SECONDS = 15.0

_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self' data: https:; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_STATIC = {"gallery.css": "text/css", "gallery.js": "text/javascript"}


def gallery_app(
    source: _data.JobsSource,
    security: TransportSecuritySettings,
    token: str | None,
    stopping: threading.Event | None = None,
    owner: str = LOCAL_USER,
) -> ASGIApp:
    """The gallery of ``owner``'s jobs in ``source``, guarded by ``security`` and ``token``.

    A browser carries no OAuth token, so the gallery is served only by a server with one user, whose
    work (``LOCAL_USER``'s) it shows.

    ``stopping`` is set when the server is asked to stop: the live-update streams then end, since
    uvicorn waits for every open response before it stops (see ``StoppingServer``).
    """
    stop = stopping or threading.Event()

    async def index(request: Request) -> Response:
        service = source()
        return _html(
            _pages.grid(_data.recent(service, _data.RECENT_JOBS, owner), _data.latest_finish(service, owner))
        )

    async def job(request: Request) -> Response:
        service = source()
        found = _data.described(service, request.path_params["job_id"], owner)
        record = service.journal.get(request.path_params["job_id"], owner)
        if found is None or record is None:
            return _html(_pages.page("Not found", "<h1>No such job</h1>"), status=404)
        lines, why = await _data.logs(service, record)
        call = _data.tool_call(record, found.seed)
        return _html(_pages.job_page(found, dict(record.arguments), call, lines, why))

    async def card(request: Request) -> Response:
        found = _data.described(source(), request.path_params["job_id"], owner)
        if found is None:
            return _html("", status=404)
        return _html(_pages.cards(found))

    async def spend(request: Request) -> Response:
        service = source()
        note = service.ledger.report(owner).note
        return _html(_pages.spend_page(_data.spend_by_day(service, owner), note))

    async def image(request: Request) -> Response:
        service = source()
        job_id, index = request.path_params["job_id"], request.path_params["index"]
        try:
            if request.query_params.get("preview"):
                found = _data.described(service, job_id, owner)
                images = found.images if found else []
                previews = await service.saver.previews(job_id, [i for i in images if i.index == index])
                if previews:
                    return Response(previews[0].data, media_type=previews[0].mime_type, headers=_HEADERS)
            data = await image_bytes(service, job_id, index, owner)
        except (UnknownJobError, NoSuchImage) as exc:
            return Response(str(exc), status_code=404, media_type="text/plain")
        except FalError as exc:
            return Response(f"The image could not be fetched: {exc.message}", status_code=502)
        return Response(data, media_type=sniff_content_type(data) or "image/jpeg", headers=_HEADERS)

    async def events(request: Request) -> Response:
        service = source()
        # A reconnecting browser says where it was (the last event's id); a new page, where its grid ends.
        since = (
            request.headers.get("last-event-id")
            or request.query_params.get("since")
            or _data.latest_finish(service, owner)
        )
        return StreamingResponse(
            _finished_jobs(request, service, owner, since, stop),
            media_type="text/event-stream",
            headers={**_HEADERS, "X-Accel-Buffering": "no"},
        )

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _STATIC:
            return Response("not found", status_code=404)
        return Response(_pages.static_file(name), media_type=_STATIC[name], headers=_HEADERS)

    routes = [
        Route("/gallery", index),
        Route("/gallery/", index),
        Route("/gallery/jobs/{job_id}", job),
        Route("/gallery/cards/{job_id}", card),
        Route("/gallery/spend", spend),
        Route("/gallery/images/{job_id}/{index:int}", image),
        Route("/gallery/events", events),
        Route("/gallery/static/{name}", static),
    ]
    app = Starlette(routes=routes)
    return GalleryGuard(app, security, token)


async def _finished_jobs(
    request: Request, jobs: JobService, owner: str, since: str, stop: threading.Event
) -> AsyncIterator[str]:
    """Server-sent events: one ``job`` event per job that finishes, until the browser goes or the server stops."""
    yield "retry: 2000\n\n"
    quiet = 0.0
    while not stop.is_set() and not await request.is_disconnected():
        finished, since = _data.finished_since(jobs, owner, since)
        for job_id in finished:
            yield f"event: job\nid: {since}\ndata: {json.dumps({'job_id': job_id})}\n\n"
        if finished:
            quiet = 0.0
        elif quiet >= KEEPALIVE_SECONDS:
            yield ": still here\n\n"
            quiet = 0.0
        await anyio.sleep(POLL_SECONDS)
        quiet += POLL_SECONDS


class StoppingServer(uvicorn.Server):
    """uvicorn, telling ``stopping`` as soon as Ctrl-C or SIGTERM asks it to stop.

    uvicorn then waits for open responses to finish, and an event stream never does by itself: without
    this, one open gallery tab would keep the server from stopping.
    """

    def __init__(self, config: uvicorn.Config, stopping: threading.Event) -> None:
        super().__init__(config)
        self.stopping = stopping

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.stopping.set()
        super().handle_exit(sig, frame)


def _html(text: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(text, status_code=status, headers=_HEADERS)


class GalleryGuard:
    """Host/Origin checks on every request, then the token (header, cookie, or once in the address)."""

    def __init__(self, app: ASGIApp, security: TransportSecuritySettings, token: str | None) -> None:
        self.app = app
        self._security = TransportSecurityMiddleware(security)
        self._token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        refused = await self._security.validate_request(request)
        if refused is None and self._token and not request.url.path.startswith("/gallery/static/"):
            refused = self._check_token(request)
        await (refused or self.app)(scope, receive, send)

    def _check_token(self, request: Request) -> Response | None:
        assert self._token is not None
        given = request.query_params.get("token")
        if given is not None and _same(given, self._token):
            clean = URL(scope=request.scope).remove_query_params("token")
            response = RedirectResponse(
                clean.path + (f"?{clean.query}" if clean.query else ""), status_code=303
            )
            response.set_cookie(
                COOKIE, self._token, path="/gallery", httponly=True, samesite="strict", max_age=30 * 86400
            )
            return response
        header = request.headers.get("authorization", "")
        if _same(header, f"Bearer {self._token}") or _same(request.cookies.get(COOKIE, ""), self._token):
            return None
        return HTMLResponse(
            _pages.refusal(
                "This gallery needs its token: open the address fal-flux-mcp printed (it ends in ?token=…), "
                "or send Authorization: Bearer <FLUX_MCP_HTTP_TOKEN>."
            ),
            status_code=401,
            headers={**_HEADERS, "WWW-Authenticate": 'Bearer realm="fal-flux-mcp"'},
        )


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())
