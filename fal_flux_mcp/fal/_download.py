"""Fetching what fal made: its image files (public URLs, so no key is sent) and inline data URIs.

Retried like every read: a CDN answering 502 once, or a connection dropped halfway, must not cost the
user a paid image. A 4xx means the file is gone, and is not retried.

``fetch_to`` writes the body into a file as it arrives, so a 4-megapixel image is never held in memory
(hundreds of jobs finishing at once would otherwise hold hundreds of megabytes). Its chunks are
written from the event loop: a write to the page cache is a memory copy of 64 KiB, far cheaper than
a hop to a worker thread; the caller syncs the file to disk in a thread.
"""

from __future__ import annotations

import base64
import io
import logging
from typing import BinaryIO
from urllib.parse import unquote_to_bytes

import anyio
import httpx

from fal_flux_mcp.fal._exceptions import FalError, RateLimitedError, UpstreamUnavailableError
from fal_flux_mcp.fal._responses import retry_after_seconds
from fal_flux_mcp.fal._retry import RetryPolicy
from fal_flux_mcp.fal._transport import describe_transport_error
from fal_flux_mcp.fal._urls import without_query

logger = logging.getLogger("fal_flux_mcp.fal")


class Downloader:
    """Downloads files over the client's connection pool, within a size limit, with retries."""

    def __init__(self, http: httpx.AsyncClient, retry: RetryPolicy, *, max_bytes: int) -> None:
        self._http = http
        self._retry = retry
        self.max_bytes = max_bytes

    async def fetch(self, url: str) -> bytes:
        """The bytes at ``url`` (a data URI is decoded here)."""
        buffer = io.BytesIO()
        await self.fetch_to(url, buffer)
        return buffer.getvalue()

    async def fetch_to(self, url: str, file: BinaryIO) -> int:
        """Write the bytes at ``url`` into ``file`` from its current position; returns how many.

        A retry after a partial body starts again from the same position, cutting off what came before.
        """
        start = file.tell()
        if url.startswith("data:"):
            return file.write(_decode_data_uri(url))
        policy = self._retry
        for attempt in range(1, policy.max_attempts + 1):
            file.seek(start)
            file.truncate()
            try:
                return await self._fetch_once(url, file)
            except (UpstreamUnavailableError, RateLimitedError) as exc:
                if attempt == policy.max_attempts:
                    raise
                delay = policy.wait_after(attempt, exc)
                logger.info("download %s: %s; retrying in %.2fs", without_query(url), exc, delay)
                await anyio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def answers(self, url: str) -> bool | None:
        """Whether ``url`` still serves its file: True, False (fal's CDN answers it is gone), or None
        when that cannot be told now (fal unreachable, a 5xx). One HEAD request, no retries: the
        caller has a fallback (the saved copy), and a quick answer is worth more than a sure one."""
        if url.startswith("data:"):
            return True
        try:
            response = await self._http.head(url, follow_redirects=True)
        except httpx.TransportError:
            return None
        if response.is_success:
            return True
        if response.status_code in (401, 403, 404, 410):
            return False
        return None

    async def _fetch_once(self, url: str, file: BinaryIO) -> int:
        try:
            async with self._http.stream("GET", url) as response:
                if not response.is_success:
                    await response.aread()
                    status = response.status_code
                    message = f"could not download {without_query(url)} (HTTP {status})"
                    if status == 429:
                        raise RateLimitedError(
                            message, retry_after=retry_after_seconds(response), status_code=status
                        )
                    if status >= 500 or status == 408:
                        raise UpstreamUnavailableError(message, status_code=status)
                    raise FalError(message, status_code=status)
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise FalError(f"{without_query(url)} is larger than {self.max_bytes} bytes")
                    file.write(chunk)
                return size
        except httpx.TransportError as exc:
            raise UpstreamUnavailableError(
                f"could not download {without_query(url)}: {describe_transport_error(exc)}"
            ) from None


def _decode_data_uri(uri: str) -> bytes:
    header, _, payload = uri.partition(",")
    if header.endswith(";base64"):
        return base64.b64decode(payload)
    return unquote_to_bytes(payload)
