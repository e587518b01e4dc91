"""The emulator's HTTP face: fal's queue, run, storage and CDN routes on one Starlette app.

One origin stands in for ``queue.fal.run``, ``fal.run`` (under ``/run``), ``rest.fal.ai`` and
``v3.fal.media``, with the same paths as the real hosts. This module only assembles the app: the
route table in the order it must match, the error handlers and the lifespan that starts ``Core``.
The state lives in ``_core``, the handlers in ``_routes_queue`` and ``_routes_storage``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fal_flux_mcp.emulator._core import Core
from fal_flux_mcp.emulator._platform import pricing, request_history
from fal_flux_mcp.emulator._responses import json_response, with_faults
from fal_flux_mcp.emulator._routes_queue import queue_routes
from fal_flux_mcp.emulator._routes_storage import storage_routes


def build_app(core: Core) -> Starlette:
    """The Starlette app serving fal's protocol from ``core``."""

    async def jwks(request: Request) -> Response:
        return JSONResponse(core.signer.jwks())

    # Order matters: the queue's ``/{prefix:path}/requests/{request_id}`` patterns and the catch-all
    # submit match any path, so the platform API (history, pricing) and the storage routes must come first.
    routes = [
        Route("/.well-known/jwks.json", with_faults(core, "jwks", jwks), methods=["GET"]),
        Route(
            "/v1/models/requests/by-endpoint",
            with_faults(core, "history", functools.partial(request_history, core)),
            methods=["GET"],
        ),
        Route(
            "/v1/models/pricing",
            with_faults(core, "pricing", functools.partial(pricing, core)),
            methods=["GET"],
        ),
        *storage_routes(core),
        *queue_routes(core),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return json_response({"detail": exc.detail}, exc.status_code, headers=dict(exc.headers or {}))

    async def server_error(request: Request, exc: Exception) -> Response:
        return json_response({"detail": "Internal server error", "error_type": "internal_error"}, 500)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await core.startup()
        try:
            yield
        finally:
            await core.shutdown()

    return Starlette(
        routes=routes,
        exception_handlers={HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
    )
