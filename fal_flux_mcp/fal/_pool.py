"""The HTTP clients the fal client sends through, and the queue in front of their connection pools.

httpcore hands out connections by scanning every waiting request against every connection each time
either changes. With a few requests that is nothing; with two hundred jobs finishing together (each
fetching a result and downloading an image) the scans cost more CPU than the requests themselves.
So requests wait in a FIFO queue here, and httpcore only ever sees as many as it has connections.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import httpx

from fal_flux_mcp._version import __version__

_DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)


def http_client(*, max_connections: int, keepalive: int, queue: bool = True) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` for fal; ``queue``: at most ``max_connections`` requests in the pool."""
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=keepalive)
    transport: httpx.AsyncBaseTransport = httpx.AsyncHTTPTransport(limits=limits)
    if queue:
        transport = _Queued(transport, max_connections)
    return httpx.AsyncClient(
        timeout=_DEFAULT_TIMEOUT,
        transport=transport,
        headers={"User-Agent": f"fal-flux-mcp/{__version__}"},
    )


class _Queued(httpx.AsyncBaseTransport):
    """Lets ``slots`` requests at a time through; a slot is held until the response body is closed."""

    def __init__(self, inner: httpx.AsyncBaseTransport, slots: int) -> None:
        self._inner = inner
        self._slots = anyio.Semaphore(slots)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await self._slots.acquire()
        try:
            response = await self._inner.handle_async_request(request)
        except BaseException:
            self._slots.release()
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _Releasing(response.stream, self._slots)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class _Releasing(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, slots: anyio.Semaphore) -> None:
        self._inner = inner
        self._slots: anyio.Semaphore | None = slots

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            if self._slots is not None:
                self._slots.release()
                self._slots = None
