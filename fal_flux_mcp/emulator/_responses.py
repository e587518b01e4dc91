"""How the emulator answers: JSON as fal's gateway sends it, dropped connections, injected faults.

Every route answers through these pieces, so they live apart from the routes themselves:
``json_response`` (always with ``x-fal-request-id``), ``DropResponse`` (close the connection
unanswered), ``fault_response`` (the error bodies of fal and its ingress) and ``with_faults``, the
wrapper that counts each request and applies any fault armed for its kind.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from fal_flux_mcp.emulator._faults import Fault

if TYPE_CHECKING:
    from fal_flux_mcp.emulator._core import Core

log = logging.getLogger("fal_flux_mcp.emulator")

#: ASGI scope extension the server's protocol adds: a callable that closes the connection unanswered.
DROP_EXTENSION = "fal_flux_mcp.emulator.drop"

_NGINX_502 = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)

Handler = Callable[[Request], Awaitable[Response]]


def json_response(
    body: Any, status: int = 200, request_id: str | None = None, headers: dict[str, str] | None = None
) -> Response:
    """A JSON response as fal's gateway sends it: always with ``x-fal-request-id``."""
    all_headers = {"x-fal-request-id": request_id or str(uuid.uuid4())}
    all_headers.update(headers or {})
    return JSONResponse(body, status_code=status, headers=all_headers)


def request_origin(request: Request) -> str:
    """The scheme and host the client used, for the URLs a response hands back."""
    return str(request.base_url).rstrip("/")


class DropResponse(Response):
    """Not a response: the connection is closed without an answer, as a crashed proxy would.

    ``drain`` reads an unread request body first, so the client sees a clean close (not a reset
    caused by unread bytes) whichever way it sent its request.
    """

    def __init__(self, drain: bool = False) -> None:
        super().__init__()
        self._drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        drop = scope.get("extensions", {}).get(DROP_EXTENSION)
        if drop is None:
            raise RuntimeError("this server cannot drop connections (run the emulator with its own server)")
        while self._drain:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        drop()


def fault_response(fault: Fault) -> Response:
    """The answer an error fault stands for: fal's 429/503/500, its CDN's 404, or nginx's 502 page."""
    if fault.fault == "429":
        headers = {}
        if fault.retry_after is not None:
            value = fault.retry_after
            headers["Retry-After"] = str(int(value)) if float(value).is_integer() else str(value)
        return json_response({"detail": "Rate limit exceeded. Please try again later."}, 429, headers=headers)
    if fault.fault == "502_nginx":
        return Response(_NGINX_502, status_code=502, media_type="text/html")
    if fault.fault == "404":  # what fal's CDN answers for a file it no longer keeps
        return json_response({"detail": "Not Found"}, 404)
    if fault.fault == "503_fal":
        return json_response(
            {"detail": "Service temporarily unavailable", "error_type": "runner_scheduling_failure"},
            503,
            headers={"X-Fal-Error-Type": "runner_scheduling_failure"},
        )
    return json_response({"detail": "Internal server error", "error_type": "internal_error"}, 500,
                         headers={"X-Fal-Error-Type": "internal_error"})  # fmt: skip


def with_faults(core: Core, kind: str, handler: Handler) -> Handler:
    """Count the request under ``kind`` and apply any armed fault around ``handler``."""

    async def endpoint(request: Request) -> Response:
        core.counters[kind] += 1
        fault = core.faults.take(kind)
        if fault is not None:
            log.debug("fault %s on %s %s", fault.fault, request.method, request.url.path)
            if fault.fault == "drop_before":
                return DropResponse(drain=True)
            if fault.fault not in ("slow", "drop", "500_after"):
                return fault_response(fault)
        response = await handler(request)
        if fault is not None:
            # The request has been processed (a submit created its job) before the client is made
            # to wait, loses the connection or gets an error: what leaves it unsure of the outcome.
            if fault.fault == "slow":
                await asyncio.sleep(fault.delay)
            elif fault.fault == "drop":
                return DropResponse()
            elif fault.fault == "500_after":
                return fault_response(fault)
        return response

    return endpoint


def iso_time(unix: float) -> str:
    """A Unix time as the ISO 8601 text fal's APIs answer with (UTC)."""
    return datetime.fromtimestamp(unix, UTC).isoformat()
