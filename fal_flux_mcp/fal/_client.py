"""The fal client: submit a FLUX job, follow it, fetch its images, cancel it, upload inputs.

It knows fal's HTTP protocol and nothing of MCP. One ``httpx.AsyncClient`` is shared by every call,
and the cheapest path is the default: ``wait`` follows a job over fal's status stream, so a job costs
three requests (submit, stream, result) however long it runs, with polling only as the fallback.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO, Literal

import anyio
import httpx
import pydantic
from httpx_sse import EventSource, SSEError

from fal_flux_mcp.fal._download import Downloader
from fal_flux_mcp.fal._exceptions import (
    FalError,
    FalTimeoutError,
    JobFailedError,
    NotFoundError,
    RateLimitedError,
    UpstreamUnavailableError,
)
from fal_flux_mcp.fal._inputs import validate_input
from fal_flux_mcp.fal._platform import Platform
from fal_flux_mcp.fal._pool import http_client
from fal_flux_mcp.fal._responses import json_body
from fal_flux_mcp.fal._retry import RetryPolicy
from fal_flux_mcp.fal._storage import HasFileno, MiB, Uploader
from fal_flux_mcp.fal._transport import FalTransport, describe_transport_error
from fal_flux_mcp.fal._types import CancelResult, QueueHandle, QueueStatus
from fal_flux_mcp.fal._urls import EndpointId, FalHosts
from fal_flux_mcp.models import FalInput, FluxOutput
from fal_flux_mcp.settings import Settings

logger = logging.getLogger("fal_flux_mcp.fal")

Priority = Literal["normal", "low"]
StatusCallback = Callable[[QueueStatus], Awaitable[None]]

#: The status stream may stay quiet while a job waits in the queue; after this long it is reopened.
_STREAM_TIMEOUT = httpx.Timeout(5.0, read=60.0)
#: Consecutive broken status streams before falling back to polling.
_STREAM_ATTEMPTS = 3
_MAX_POLL_INTERVAL = 2.0
#: The constructor's arguments that ``with_key`` does not copy.
_NOT_COPIED = frozenset({"self", "key", "http", "streams"})


class FalClient:
    """An async client for fal's queue and storage APIs.

    ``key`` may be None: the client then works for everything that needs no key (downloads) and raises
    ``MissingCredentialsError`` at the first call that does, not at construction.
    """

    def __init__(
        self,
        key: str | None = None,
        *,
        base_url: str | None = None,
        http: httpx.AsyncClient | None = None,
        retry: RetryPolicy | None = None,
        multipart_threshold: int = 100 * MiB,
        part_size: int = 10 * MiB,
        poll_interval: float = 0.25,
        max_download_bytes: int = 64 * MiB,
        streams: httpx.AsyncClient | None = None,
    ) -> None:
        # How this client was configured, but for its key and pools: what ``with_key`` copies.
        self._options = {name: value for name, value in locals().items() if name not in _NOT_COPIED}
        self.hosts = FalHosts(base_url)
        self._owns_http = http is None
        self.http = http or http_client(max_connections=16, keepalive=16)
        # Status streams stay open for a job's whole life. In a pool of their own they neither take
        # the request pool's slots nor make it drop its idle keep-alive connections (httpcore counts
        # every open connection against max_keepalive_connections), which under load would cost a
        # new connection, and against fal a new TLS handshake, for every request.
        self._streams = streams or http or http_client(max_connections=1000, keepalive=10, queue=False)
        self._transport = FalTransport(
            self.http, self.hosts, key, retry or RetryPolicy(), streams=self._streams
        )
        self._uploader = Uploader(
            self._transport, multipart_threshold=multipart_threshold, part_size=part_size
        )
        self.platform = Platform(self._transport, self.hosts)
        self.poll_interval = poll_interval
        self._downloader = Downloader(self.http, self._transport.retry, max_bytes=max_download_bytes)

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> FalClient:
        """A client configured from fal-flux-mcp's settings (key and ``FLUX_MCP_FAL_URL``)."""
        kwargs.setdefault(
            "retry",
            RetryPolicy(
                max_attempts=settings.retry_attempts,
                base_delay=settings.retry_base_delay,
                max_delay=settings.retry_max_delay,
            ),
        )
        # With each user's own key (FLUX_MCP_USER_KEYS=on) the server's key is never sent: this client
        # then only lends its connections to the users' clients (``with_key``) and downloads.
        key = None if settings.user_keys else settings.fal_credentials()
        return cls(key, base_url=settings.fal_url, **kwargs)

    def with_key(self, key: str | None) -> FalClient:
        """A client like this one that sends ``key``, through this one's connection pools.

        For a server whose users each bring their own key: one pool for all of them, so that a
        hundred users cost no more connections than one. Closing it leaves the pools open.
        """
        return FalClient(key, http=self.http, streams=self._streams, **self._options)  # type: ignore[arg-type]

    async def __aenter__(self) -> FalClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client if this object created it."""
        if self._owns_http:
            await self.http.aclose()
            await self._streams.aclose()

    # ------------------------------------------------------------------------------------------ queue

    async def submit(
        self,
        endpoint_id: str,
        arguments: FalInput | Mapping[str, Any],
        *,
        webhook_url: str | None = None,
        priority: Priority | None = None,
        start_timeout: float | None = None,
    ) -> QueueHandle:
        """Queue a job and return its handle (keep it: it is how the paid job stays findable).

        A submit is retried only when it surely did not reach fal; after a read timeout or a dropped
        connection ``SubmissionStateUnknownError`` is raised instead of risking a second, paid, job.
        """
        endpoint = EndpointId.parse(endpoint_id)
        payload = validate_input(endpoint_id, arguments).model_dump(mode="json", exclude_none=True)
        headers: dict[str, str] = {}
        if priority is not None:
            if priority not in ("normal", "low"):
                raise ValueError("priority must be 'normal' or 'low'")
            headers["X-Fal-Queue-Priority"] = priority
        if start_timeout is not None:
            if start_timeout <= 1:
                raise ValueError("start_timeout must be more than 1 second")
            headers["X-Fal-Request-Timeout"] = str(float(start_timeout))
        params = {"fal_webhook": webhook_url} if webhook_url else None
        response = await self._transport.send(
            "POST",
            self.hosts.submit_url(endpoint),
            phase="submit",
            idempotency="submit",
            json=payload,
            headers=headers,
            params=params,
        )
        return self._handle_from_submit(endpoint_id, endpoint, response)

    def _handle_from_submit(
        self, endpoint_id: str, endpoint: EndpointId, response: httpx.Response
    ) -> QueueHandle:
        try:
            body = response.json()
            request_id = str(body["request_id"])
        except (ValueError, KeyError, TypeError):
            raise UpstreamUnavailableError(
                "fal accepted the submit but its answer had no request id; the job may exist, see "
                "fal.ai/dashboard/requests"
            ) from None
        rebuilt = self.hosts.queue_urls(endpoint, request_id)
        urls = {}
        for name in ("status_url", "response_url", "cancel_url"):
            given = body.get(name)
            if isinstance(given, str) and self.hosts.may_carry_key(given):
                urls[name] = given
            else:
                # Never follow a URL that would take the key elsewhere; the id alone finds the job.
                if given:
                    logger.warning("fal returned a %s outside fal's hosts; rebuilt it from the id", name)
                urls[name] = getattr(rebuilt, name)
        position = body.get("queue_position")
        return QueueHandle(
            endpoint_id=endpoint_id,
            request_id=request_id,
            queue_position=position if isinstance(position, int) else None,
            **urls,
        )

    def handle(self, endpoint_id: str, request_id: str, *, full_path: bool = False) -> QueueHandle:
        """Rebuild a handle from a request id, as fal's clients do (owner/alias URLs by default)."""
        urls = self.hosts.queue_urls(EndpointId.parse(endpoint_id), request_id, full_path=full_path)
        return QueueHandle(
            endpoint_id=endpoint_id,
            request_id=request_id,
            status_url=urls.status_url,
            response_url=urls.response_url,
            cancel_url=urls.cancel_url,
        )

    async def resolve_handle(self, endpoint_id: str, request_id: str) -> tuple[QueueHandle, QueueStatus]:
        """A working handle for a request id: the owner/alias URLs, else those under the full endpoint id.

        Some fal apps route status under the full path and others reject it; probing both is the
        fallback fal's own clients use.
        """
        handle = self.handle(endpoint_id, request_id)
        try:
            return handle, await self.status(handle)
        except NotFoundError:
            if not EndpointId.parse(endpoint_id).path:
                raise
            full = self.handle(endpoint_id, request_id, full_path=True)
            return full, await self.status(full)

    async def status(self, handle: QueueHandle, *, logs: bool = False) -> QueueStatus:
        """The job's status now; ``logs=True`` includes its log lines."""
        response = await self._transport.send(
            "GET", handle.status_url, phase="status", params={"logs": "1" if logs else "0"}
        )
        return _parse_status(response.json())

    async def stream_status(
        self, handle: QueueHandle, *, logs: bool = False, poll_interval: float | None = None
    ) -> AsyncIterator[QueueStatus]:
        """Status updates until COMPLETED: fal's SSE stream, reopened when it breaks, polling if it cannot.

        A stream that is missing (404/405) or not SSE means polling at once; one that breaks or goes
        quiet for a minute (a long queue) is reopened, up to three times in a row, before polling.
        Polling starts at ``poll_interval`` and slows to 2 s, so a long job costs tens of requests,
        not hundreds. Each status is yielded once per change; the iterator ends after COMPLETED.
        """
        interval = poll_interval if poll_interval is not None else self.poll_interval
        failures = 0
        while failures < _STREAM_ATTEMPTS:
            try:
                async for status in self._sse(handle, logs):
                    failures = 0
                    yield status
                    if status.done:
                        return
                failures += 1  # closed before COMPLETED: reopen
            except (NotFoundError, SSEError) as exc:
                logger.info("no status stream here (%s); polling instead", exc)
                break
            except (UpstreamUnavailableError, FalTimeoutError, RateLimitedError) as exc:
                failures += 1
                logger.info(
                    "status stream broke (%s); %s",
                    exc,
                    "reopening" if failures < _STREAM_ATTEMPTS else "polling",
                )
                await anyio.sleep(self._transport.retry.wait_after(failures, exc))
        previous: QueueStatus | None = None
        while True:
            status = await self.status(handle, logs=logs)
            if status != previous:
                yield status
            if status.done:
                return
            previous = status
            await anyio.sleep(interval)
            interval = min(_MAX_POLL_INTERVAL, interval * 1.5)

    async def _sse(self, handle: QueueHandle, logs: bool) -> AsyncIterator[QueueStatus]:
        async with self._transport.stream(
            "GET",
            self.hosts.stream_url(handle.status_url),
            phase="status",
            params={"logs": "1" if logs else "0"},
            headers={"Accept": "text/event-stream", "Cache-Control": "no-store"},
            timeout=_STREAM_TIMEOUT,
        ) as response:
            try:
                async for event in EventSource(response).aiter_sse():
                    if not event.data:
                        continue
                    try:
                        yield _parse_status(json.loads(event.data))
                    except (ValueError, pydantic.ValidationError):
                        logger.debug("ignoring an unreadable status event")
            except httpx.TransportError as exc:
                raise UpstreamUnavailableError(
                    f"the status stream broke: {describe_transport_error(exc)}"
                ) from None

    async def result(self, handle: QueueHandle) -> FluxOutput | None:
        """The job's output, or None while it is still running (fal's 400 "still in progress").

        A job that failed raises: ``ValidationError``/``ContentPolicyError`` for a rejected input,
        ``JobFailedError`` for a failure on fal's side.
        """
        response = await self._transport.send("GET", handle.response_url, phase="result", ok_statuses=(400,))
        body = json_body(response)
        if response.status_code == 400:
            detail = body.get("detail") if isinstance(body, dict) else None
            if isinstance(detail, str) and "in progress" in detail.lower():
                return None
            raise FalError(
                f"fal answered HTTP 400 for the result: {detail or response.text[:300]}",
                status_code=400,
                request_id=handle.request_id,
            )
        try:
            return FluxOutput.model_validate(body)
        except pydantic.ValidationError as exc:
            raise JobFailedError(
                f"the job finished but its output was not understood ({exc.error_count()} problems)",
                request_id=handle.request_id,
            ) from None

    async def wait(
        self, handle: QueueHandle, *, logs: bool = False, on_status: StatusCallback | None = None
    ) -> FluxOutput:
        """Follow the job to the end and return its output. Cancelling the caller does not cancel the job."""
        last: QueueStatus | None = None
        async for status in self.stream_status(handle, logs=logs):
            last = status
            if on_status is not None:
                await on_status(status)
        try:
            output = await self.result(handle)
        except UpstreamUnavailableError:
            if last is not None and last.error:  # fal's status said the job failed: that is the verdict
                raise JobFailedError(
                    last.error, request_id=handle.request_id, error_type=last.error_type
                ) from None
            raise
        retries = 0
        while output is None:  # COMPLETED was reported but the result is not served yet: ask again shortly
            if last is not None and last.error:
                raise JobFailedError(last.error, request_id=handle.request_id, error_type=last.error_type)
            retries += 1
            if retries > 40:
                raise UpstreamUnavailableError(
                    f"fal reported job {handle.request_id} completed but does not serve its result yet; "
                    "ask for its status again later"
                )
            await anyio.sleep(self.poll_interval)
            output = await self.result(handle)
        return output

    async def cancel(self, handle: QueueHandle) -> CancelResult:
        """Ask fal to cancel; a queued job never runs, a running one is stopped on a best-effort basis."""
        response = await self._transport.send("PUT", handle.cancel_url, phase="cancel", ok_statuses=(400,))
        body = json_body(response)
        text = json.dumps(body) if body is not None else response.text
        if response.status_code == 400 or (isinstance(body, dict) and body.get("success") is False):
            return CancelResult(accepted=False, detail=f"the job had already finished ({text[:200]})")
        return CancelResult(accepted=True, detail=f"cancellation requested ({text[:200]})")

    # ---------------------------------------------------------------------------------------- storage

    async def upload_file(
        self, path: str | Path, *, content_type: str | None = None, file_name: str | None = None
    ) -> str:
        """Upload a local file to fal's storage (streamed from disk) and return its URL.

        A file checked beforehand should be opened by the checker and given to ``upload_from_file``.
        """
        return await self._uploader.upload_file(path, content_type=content_type, file_name=file_name)

    async def upload_from_file(
        self,
        file: int | HasFileno,
        *,
        file_name: str,
        content_type: str | None = None,
        size: int | None = None,
    ) -> str:
        """Upload from an open file (a descriptor or anything with ``fileno()``) and return its URL.

        Nothing is opened by name, so what is sent is the very file the caller opened (and checked),
        even if its name is repointed meanwhile. It is read by position and left open for the caller.
        """
        return await self._uploader.upload_from_file(
            file, content_type=content_type, file_name=file_name, size=size
        )

    async def upload_bytes(self, data: bytes, *, content_type: str, file_name: str | None = None) -> str:
        """Upload bytes to fal's storage and return their URL."""
        return await self._uploader.upload_bytes(data, content_type=content_type, file_name=file_name)

    async def download(self, url: str) -> bytes:
        """Fetch a generated file (no key is sent: fal's file URLs are public), retried like every read."""
        return await self._downloader.fetch(url)

    async def download_to(self, url: str, file: BinaryIO) -> int:
        """``download`` into ``file`` as the bytes arrive, never holding them all; returns how many."""
        return await self._downloader.fetch_to(url, file)

    async def url_answers(self, url: str) -> bool | None:
        """Whether a file URL still serves its file (None: cannot be told right now)."""
        return await self._downloader.answers(url)


def _parse_status(body: Any) -> QueueStatus:
    if not isinstance(body, dict):
        raise UpstreamUnavailableError("fal's status answer was not a JSON object")
    try:
        return QueueStatus.model_validate(body)
    except pydantic.ValidationError:
        raise UpstreamUnavailableError(f"fal reported an unknown status {body.get('status')!r}") from None
