"""Sending one request to fal: the key, the retries, and the mapping of failures to our exceptions.

This is the boundary under the fal client. Everything that leaves for fal goes through ``send`` or
``stream``, so three rules hold everywhere: the key is attached only to fal's hosts (or the configured
local origin), a submit is never replayed once it may have arrived, and no ``httpx`` exception escapes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Literal

import anyio
import httpx

from fal_flux_mcp.fal._exceptions import (
    FalError,
    FalTimeoutError,
    MissingCredentialsError,
    SubmissionStateUnknownError,
    UpstreamUnavailableError,
)
from fal_flux_mcp.fal._keys import key_problem
from fal_flux_mcp.fal._responses import Phase, error_from_response
from fal_flux_mcp.fal._retry import (
    Idempotency,
    RetryPolicy,
    delay_before_retry,
    response_retryable,
    surely_not_sent,
    transport_error_retryable,
)
from fal_flux_mcp.fal._urls import FalHosts, without_query

logger = logging.getLogger("fal_flux_mcp.fal")

Auth = Literal["key", "none"]
ContentFactory = Callable[[], Any]


class FalTransport:
    """Sends requests to fal over one shared ``httpx.AsyncClient``."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        hosts: FalHosts,
        key: str | None,
        retry: RetryPolicy,
        *,
        streams: httpx.AsyncClient | None = None,
    ) -> None:
        self.http = http
        self.streams = streams or http
        self.hosts = hosts
        self._key = key
        self.retry = retry
        # With FLUX_MCP_FAL_URL set, a rejected key is most likely not the emulator's: say so.
        self._local_origin = hosts.queue if hosts.overridden else None

    def _headers(self, url: str, auth: Auth | str, extra: Mapping[str, str] | None) -> dict[str, str]:
        headers = dict(extra or {})
        if auth == "key":
            self.hosts.check_key_url(url)
            if not self._key:
                raise MissingCredentialsError(
                    "No fal key is configured. Set FAL_KEY (or FAL_KEY_ID and FAL_KEY_SECRET) in the "
                    "server's environment; get a key at fal.ai/dashboard/keys."
                )
            if (problem := key_problem(self._key)) is not None:
                raise MissingCredentialsError(
                    f"The fal key (FAL_KEY, or FAL_KEY_ID and FAL_KEY_SECRET; value hidden) {problem}, so "
                    "nothing was sent to fal. Create a key at https://fal.ai/dashboard/keys and set FAL_KEY "
                    'to it, as key_id:key_secret, in the server\'s environment (the "env" of its entry in '
                    "the MCP client's configuration), then restart the server."
                )
            headers["Authorization"] = f"Key {self._key}"
        elif auth != "none":
            headers["Authorization"] = auth
        return headers

    async def send(
        self,
        method: str,
        url: str,
        *,
        phase: Phase,
        auth: Auth | str = "key",
        idempotency: Idempotency = "idempotent",
        json: Any = None,
        content: ContentFactory | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        timeout: httpx.Timeout | None = None,
        ok_statuses: tuple[int, ...] = (),
    ) -> httpx.Response:
        """Send with retries; return a 2xx response (or one in ``ok_statuses``), raise ``FalError`` otherwise.

        ``content`` is a factory so that a streamed body (a file read from disk) starts afresh on
        every attempt.
        """
        request_headers = self._headers(url, auth, headers)
        attempt = 0
        while True:
            attempt += 1
            body = content() if content is not None else None
            try:
                response = await self.http.request(
                    method,
                    url,
                    json=json,
                    content=body,
                    headers=request_headers,
                    params=params,
                    timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except httpx.TransportError as exc:
                if attempt < self.retry.max_attempts and transport_error_retryable(exc, idempotency):
                    delay = self.retry.backoff(attempt)
                    logger.info(
                        "%s %s: %s; retrying in %.2fs", method, without_query(url), type(exc).__name__, delay
                    )
                    await anyio.sleep(delay)
                    continue
                raise _transport_error(exc, phase, idempotency, url) from None
            if response.is_success or response.status_code in ok_statuses:
                return response
            if attempt < self.retry.max_attempts and response_retryable(response, idempotency):
                delay = delay_before_retry(self.retry, attempt, response)
                if delay is not None:
                    logger.info(
                        "%s %s: HTTP %d; retrying in %.2fs",
                        method,
                        without_query(url),
                        response.status_code,
                        delay,
                    )
                    await anyio.sleep(delay)
                    continue
            raise error_from_response(response, phase, attempts=attempt, local_origin=self._local_origin)

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        url: str,
        *,
        phase: Phase,
        auth: Auth | str = "key",
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        timeout: httpx.Timeout | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """Open a streamed response once (no retries: the caller owns the fallback); errors are ``FalError``."""
        request_headers = self._headers(url, auth, headers)
        try:
            async with self.streams.stream(
                method,
                url,
                headers=request_headers,
                params=params,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            ) as response:
                if not response.is_success:
                    await response.aread()
                    raise error_from_response(response, phase, local_origin=self._local_origin)
                yield response
        except httpx.TransportError as exc:
            raise _transport_error(exc, phase, "idempotent", url) from None


def _transport_error(exc: httpx.TransportError, phase: Phase, idempotency: Idempotency, url: str) -> FalError:
    where = without_query(url)
    what = describe_transport_error(exc)
    if idempotency == "submit" and not surely_not_sent(exc):
        return SubmissionStateUnknownError(
            f"The submit to {where} may have reached fal, but no answer came back: {what}. It was not "
            "retried, so that the job is not paid for twice."
        )
    if isinstance(exc, httpx.TimeoutException):
        return FalTimeoutError(f"fal did not answer in time ({phase} {where}: {what}).")
    return UpstreamUnavailableError(
        f"Could not reach fal ({phase} {where}: {what}). Check the network and try again."
    )


def describe_transport_error(exc: httpx.TransportError) -> str:
    """What went wrong on the wire, in words rather than an httpx class name."""
    if isinstance(exc, httpx.ConnectTimeout):
        return "connecting took too long"
    if isinstance(exc, httpx.ConnectError):
        return "the connection could not be made"
    if isinstance(exc, httpx.PoolTimeout):
        return "too many requests were already open"
    if isinstance(exc, httpx.ReadTimeout):
        return "the answer took too long"
    if isinstance(exc, httpx.WriteTimeout):
        return "sending the request took too long"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "the connection was closed before the answer was complete"
    if isinstance(exc, httpx.LocalProtocolError):
        return "the request could not be sent as HTTP (a header holds a character HTTP does not allow)"
    if isinstance(exc, httpx.ReadError | httpx.WriteError | httpx.NetworkError):
        return "the connection broke"
    if isinstance(exc, httpx.ProxyError):
        return "the proxy refused the connection"
    return "the connection failed"
