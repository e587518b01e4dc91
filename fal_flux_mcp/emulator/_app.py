"""The emulator's HTTP face: fal's queue, run, storage and CDN routes on one Starlette app.

One origin stands in for ``queue.fal.run``, ``fal.run`` (under ``/run``), ``rest.fal.ai`` and
``v3.fal.media``, with the same paths as the real hosts. ``Core`` holds the state the routes share;
it lives on the server's event loop, and only ``counters``, ``faults`` and ``config`` are touched
from other threads.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import logging
import math
import os
import secrets
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from fal_flux_mcp.emulator import _jobs as jobs
from fal_flux_mcp.emulator._config import EmulatorConfig
from fal_flux_mcp.emulator._faults import Fault, FaultInjector
from fal_flux_mcp.emulator._platform import request_history
from fal_flux_mcp.emulator._render import content_type, render
from fal_flux_mcp.emulator._storage import FileStore, StorageError
from fal_flux_mcp.emulator._validation import FieldErrors, parse_body, validate
from fal_flux_mcp.emulator._webhooks import WebhookSigner, deliver, webhook_body
from fal_flux_mcp.fal._urls import EndpointId
from fal_flux_mcp.models import INPUT_MODELS, FalInput, output_size
from fal_flux_mcp.registry import MODELS

log = logging.getLogger("fal_flux_mcp.emulator")

#: ASGI scope extension the server's protocol adds: a callable that closes the connection unanswered.
DROP_EXTENSION = "fal_flux_mcp.emulator.drop"

_NO_USER = "No user found for Key ID and Secret"
_BAD_FORMAT = "Invalid Key Authorization header format. Expected '<key_id>:<key_secret>'."
_CONTENT_POLICY_MSG = (
    "The content could not be processed because it contained material flagged by a content checker."
)
_NGINX_502 = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
_KEEPALIVE_SECONDS = 15.0


@dataclass(frozen=True, slots=True)
class JobInfo:
    """A snapshot of one job for tests: what was asked and where it stands."""

    request_id: str
    endpoint_id: str
    state: str
    queue_position: int
    input: Any
    priority: str
    start_timeout: float | None
    webhook_url: str | None
    runner_hint: str | None
    sync: bool
    started: bool
    cancel_requested: bool
    cancelled: bool
    outcome: str | None
    error_type: str | None
    seed: int
    finished_at: float | None
    """When the job completed, on ``time.monotonic``'s clock (for measuring a client's lag)."""


class Core:
    """State shared by the routes: config, jobs, files, counters, faults, signing key."""

    def __init__(self, config: EmulatorConfig, storage_root: Path) -> None:
        self.config = config
        self.counters: Counter[str] = Counter()
        self.faults = FaultInjector()
        self.files = FileStore(storage_root)
        self.signer = WebhookSigner()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._store: jobs.JobStore | None = None
        self._closing: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._executor: ThreadPoolExecutor | None = None
        self._http: httpx.AsyncClient | None = None
        self.pending_files: dict[str, asyncio.Task[None]] = {}
        """Generated files still rendering, by key: a download waits for them."""

    # ----------------------------------------------------------------------------------------------
    # Lifecycle (on the server's loop)

    async def startup(self) -> None:
        """Create the loop-bound parts and start the scheduler."""
        self.loop = asyncio.get_running_loop()
        self._closing = asyncio.Event()
        self._store = jobs.JobStore(lambda: self.config.max_concurrent, self._on_finish)
        self._executor = ThreadPoolExecutor(
            max_workers=min(4, os.cpu_count() or 2), thread_name_prefix="fal-flux-mcp-emulator-render"
        )
        self._http = httpx.AsyncClient()
        self._spawn(self._schedule())

    def begin_shutdown(self) -> None:
        """End status streams and waiting runs so the server can close their connections."""
        if self._closing is not None:
            self._closing.set()
        if self._store is not None:
            self._store.notify()

    async def shutdown(self) -> None:
        """Stop the scheduler and pending deliveries; release threads and connections."""
        self.begin_shutdown()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    @property
    def store(self) -> jobs.JobStore:
        """The job store; it exists once the server's loop runs."""
        assert self._store is not None, "emulator not started"
        return self._store

    @property
    def closing(self) -> asyncio.Event:
        """Set when the server stops, so long-lived responses end instead of holding it up."""
        assert self._closing is not None, "emulator not started"
        return self._closing

    def _spawn(self, coroutine: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _schedule(self) -> None:
        """Apply transitions when they fall due; sleeps until the next one rather than polling."""
        store = self.store
        while True:
            store.wakeup.clear()
            now = time.monotonic()
            store.advance(now)
            due = store.next_event_time()
            # Knob changes do not wake the scheduler, so never sleep longer than a tenth of a second.
            timeout = 0.1 if due is None else min(0.1, max(0.0, due - time.monotonic()))
            await _wait(store.wakeup, timeout)

    # ----------------------------------------------------------------------------------------------
    # Jobs

    def create_job(
        self,
        endpoint: EndpointId,
        origin: str,
        arguments: Any,
        model_input: FalInput | None,
        errors: FieldErrors | None,
        *,
        priority: int = 0,
        start_timeout: float | None = None,
        webhook_url: str | None = None,
        runner_hint: str | None = None,
        sync: bool = False,
    ) -> jobs.Job:
        """Register a job; its outcome (but for cancels and timeouts) is decided here, as input is known."""
        config = self.config
        now = time.monotonic()
        planned, nsfw = jobs.INVALID, False
        if model_input is not None:
            prompt = (getattr(model_input, "prompt", "") or "").lower()
            if _triggered(config.runner_failure_word, prompt):
                planned = jobs.RUNNER_DISCONNECTED
            elif _triggered(config.content_policy_word, prompt):
                planned = jobs.CONTENT_POLICY
            else:
                planned, nsfw = jobs.OK, _triggered(config.nsfw_word, prompt)
        seed = getattr(model_input, "seed", None)
        job = jobs.Job(
            request_id=str(uuid.uuid4()),
            endpoint=endpoint,
            origin=origin,
            arguments=arguments,
            model_input=model_input,
            errors=errors,
            planned=planned,
            nsfw=nsfw,
            seed=seed if seed is not None else secrets.randbelow(2**32),
            submitted_at=now,
            wall_offset=time.time() - now,
            ready_at=now if sync else now + config.queue_depth * config.queue_step_seconds,
            queue_step=config.queue_step_seconds,
            # A fal app rejects invalid input before any work, so such jobs end as soon as they start.
            duration=0.0 if planned == jobs.INVALID else config.job_seconds,
            priority=priority,
            start_timeout=start_timeout,
            webhook_url=webhook_url,
            runner_hint=runner_hint,
            sync=sync,
            full_path_urls=config.request_routes == "full_path",
        )
        if planned == jobs.OK:
            # Rendered ahead of time (it is deterministic) so the result is ready when the job
            # completes; the files only become reachable through the result's URLs.
            job.output = self._spawn(self._produce_output(job))
        self.store.add(job, now)
        log.debug("job %s %s submitted (%s)", job.request_id, job.endpoint_id, planned)
        return job

    async def _produce_output(self, job: jobs.Job) -> dict[str, Any]:
        """The job's output. Its files render in the background: a result only needs their URLs and
        sizes, and a download of a file still rendering waits for it, as a CDN fetch would."""
        assert job.model_input is not None
        model_input = job.model_input
        width, height = output_size(job.endpoint_id, model_input)
        output_format = getattr(model_input, "output_format", "jpeg")
        mime = content_type(output_format)
        prompt = getattr(model_input, "prompt", "") or ""
        count = getattr(model_input, "num_images", 1)
        loop = asyncio.get_running_loop()

        async def encoded(index: int) -> bytes:
            return await loop.run_in_executor(
                self._executor, render, prompt, job.seed + index, width, height, output_format, job.nsfw
            )

        async def stored(key: str, index: int) -> None:
            try:
                await loop.run_in_executor(
                    self._executor, self.files.put_bytes, key, await encoded(index), mime
                )
            finally:
                self.pending_files.pop(key, None)

        if getattr(model_input, "sync_mode", False):
            images = await asyncio.gather(*(encoded(index) for index in range(count)))
            urls = [f"data:{mime};base64,{base64.b64encode(data).decode()}" for data in images]
        else:
            urls = []
            for index in range(count):
                key = self.files.new_key(None, mime)
                self.pending_files[key] = self._spawn(stored(key, index))
                urls.append(f"{job.origin}/files/{key}")
        return {
            "images": [{"url": url, "width": width, "height": height, "content_type": mime} for url in urls],
            "timings": {"inference": job.duration},
            "seed": job.seed,
            "has_nsfw_concepts": [job.nsfw] * count,
            "prompt": prompt,
        }

    def _on_finish(self, job: jobs.Job) -> None:
        log.debug("job %s completed (%s)", job.request_id, job.outcome)
        if job.webhook_url and not job.sync:
            self._spawn(self._send_webhook(job))

    async def _send_webhook(self, job: jobs.Job) -> None:
        status, body, _ = await self.result_of(job)
        assert self._http is not None and job.webhook_url is not None
        config = self.config
        delivered = await deliver(
            self._http,
            job.webhook_url,
            webhook_body(job.request_id, status, body),
            signer=self.signer if config.sign_webhooks and self.signer.available else None,
            user_id=config.user_id,
            attempts=config.webhook_attempts,
            retry_seconds=config.webhook_retry_seconds,
            timeout=config.webhook_timeout_seconds,
        )
        if not delivered:
            log.warning("webhook for %s to %s was not delivered", job.request_id, job.webhook_url)

    async def result_of(self, job: jobs.Job) -> tuple[int, Any, dict[str, str]]:
        """What the result call answers for a finished job: status, JSON body, extra headers."""
        outcome = job.outcome
        if outcome == jobs.OK:
            assert job.output is not None
            output = await asyncio.shield(job.output)
            return 200, output, {"x-fal-billable-units": _billable_units(job, output)}
        if outcome == jobs.INVALID:
            return 422, {"detail": job.errors}, {}
        if outcome == jobs.CONTENT_POLICY:
            detail = [
                {
                    "loc": ["body", "prompt"],
                    "msg": _CONTENT_POLICY_MSG,
                    "type": "content_policy_violation",
                    "url": "https://docs.fal.ai/errors#content_policy_violation",
                    "input": getattr(job.model_input, "prompt", ""),
                }
            ]
            return 422, {"detail": detail}, {"X-Fal-Retryable": "false"}
        status, message = jobs.INFRASTRUCTURE_ERRORS[outcome or ""]
        headers = {"X-Fal-Error-Type": outcome or ""}
        if outcome == jobs.STARTUP_TIMEOUT:
            headers["X-Fal-Request-Timeout-Type"] = "user"
        return status, {"detail": message, "error_type": outcome}, headers

    async def result_response(self, job: jobs.Job) -> Response:
        """``result_of`` as the HTTP response the result and run routes send."""
        status, body, headers = await self.result_of(job)
        return _json(body, status, job.request_id, headers)

    def job_info(self, request_id: str) -> JobInfo:
        """A snapshot of a job, for tests (on the loop)."""
        job = self.store.jobs[request_id]
        now = time.monotonic()
        self.store.advance(now)
        return JobInfo(
            request_id=job.request_id,
            endpoint_id=job.endpoint_id,
            state=job.state,
            queue_position=self.store.position(job, now),
            input=job.arguments,
            priority="low" if job.priority else "normal",
            start_timeout=job.start_timeout,
            webhook_url=job.webhook_url,
            runner_hint=job.runner_hint,
            sync=job.sync,
            started=job.started_at is not None,
            cancel_requested=job.cancel_requested,
            cancelled=job.outcome == jobs.CLIENT_CANCELLED,
            outcome=job.outcome,
            error_type=job.outcome if job.outcome in jobs.INFRASTRUCTURE_ERRORS else None,
            seed=job.seed,
            finished_at=job.finished_at,
        )

    # ----------------------------------------------------------------------------------------------
    # Request checks

    def check_key(self, request: Request) -> Response | None:
        """fal's answer to a missing, malformed, unknown or locked key; None when the key is good."""
        header = request.headers.get("authorization", "")
        scheme, _, credentials = header.strip().partition(" ")
        credentials = credentials.strip()
        config = self.config
        # fal's words first, then what a person pointing their own code here needs: the key to use.
        accepted = (
            "any key of the form id:secret; set FAL_KEY to one"
            if config.accept_any_key
            else f"the key {config.key}; set FAL_KEY to it"
        )
        hint = f" This fal emulator accepts {accepted}."
        if scheme.lower() != "key" or not credentials:
            return _json({"detail": _NO_USER + "." + hint}, 401)
        if ":" not in credentials:
            return _json({"detail": _BAD_FORMAT + hint}, 401)
        if not config.accept_any_key and not secrets.compare_digest(
            credentials.encode(), config.key.encode()
        ):
            return _json({"detail": _NO_USER + "." + hint}, 401)
        if config.locked:
            return _json({"detail": f"User is locked. Reason: {config.lock_reason}"}, 403)
        return None

    def check_token(self, request: Request) -> Response | None:
        """The CDN's answer to a missing or unknown upload token; None when it is good."""
        scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer" or not self.files.token_valid(token.strip()):
            return _json({"detail": "Invalid or expired token"}, 401)
        return None

    def find_job(self, request: Request) -> jobs.Job | Response:
        """The job a ``.../requests/<id>`` URL names, or fal's refusal: unknown id, other app, wrong form."""
        job = self.store.jobs.get(request.path_params["request_id"])
        prefix = request.path_params["prefix"].strip("/")
        if job is None or not job.served_under(prefix):
            return _json({"detail": "Request not found"}, 404)
        routes = self.config.request_routes
        if job.endpoint.path and routes == "app" and prefix == job.endpoint_id:
            return _json({"detail": "Method Not Allowed"}, 405)
        if job.endpoint.path and routes == "full_path" and prefix == job.endpoint.app:
            return JSONResponse({"error": "Error", "message": f"Path /{job.endpoint.path} not found"}, 404)
        return job


# --------------------------------------------------------------------------------------------------
# Responses


def _json(
    body: Any, status: int = 200, request_id: str | None = None, headers: dict[str, str] | None = None
) -> Response:
    """A JSON response as fal's gateway sends it: always with ``x-fal-request-id``."""
    all_headers = {"x-fal-request-id": request_id or str(uuid.uuid4())}
    all_headers.update(headers or {})
    return JSONResponse(body, status_code=status, headers=all_headers)


class _DropResponse(Response):
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


def _fault_response(fault: Fault) -> Response:
    if fault.fault == "429":
        headers = {}
        if fault.retry_after is not None:
            value = fault.retry_after
            headers["Retry-After"] = str(int(value)) if float(value).is_integer() else str(value)
        return _json({"detail": "Rate limit exceeded. Please try again later."}, 429, headers=headers)
    if fault.fault == "502_nginx":
        return Response(_NGINX_502, status_code=502, media_type="text/html")
    if fault.fault == "404":  # what fal's CDN answers for a file it no longer keeps
        return _json({"detail": "Not Found"}, 404)
    if fault.fault == "503_fal":
        return _json(
            {"detail": "Service temporarily unavailable", "error_type": "runner_scheduling_failure"},
            503,
            headers={"X-Fal-Error-Type": "runner_scheduling_failure"},
        )
    return _json({"detail": "Internal server error", "error_type": "internal_error"}, 500,
                 headers={"X-Fal-Error-Type": "internal_error"})  # fmt: skip


Handler = Callable[[Request], Awaitable[Response]]


def _route(core: Core, kind: str, handler: Handler) -> Handler:
    """Count the request under ``kind`` and apply any armed fault around ``handler``."""

    async def endpoint(request: Request) -> Response:
        core.counters[kind] += 1
        fault = core.faults.take(kind)
        if fault is not None:
            log.debug("fault %s on %s %s", fault.fault, request.method, request.url.path)
            if fault.fault == "drop_before":
                return _DropResponse(drain=True)
            if fault.fault not in ("slow", "drop", "500_after"):
                return _fault_response(fault)
        response = await handler(request)
        if fault is not None:
            # The request has been processed (a submit created its job) before the client is made
            # to wait, loses the connection or gets an error: what leaves it unsure of the outcome.
            if fault.fault == "slow":
                await asyncio.sleep(fault.delay)
            elif fault.fault == "drop":
                return _DropResponse()
            elif fault.fault == "500_after":
                return _fault_response(fault)
        return response

    return endpoint


# --------------------------------------------------------------------------------------------------
# Helpers


def _origin(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _triggered(word: str, prompt: str) -> bool:
    return bool(word) and word.lower() in prompt


def _billable_units(job: jobs.Job, output: dict[str, Any]) -> str:
    count = len(output["images"])
    info = MODELS.get(job.endpoint_id)
    if info is None or info.price_unit == "image":
        return str(count)
    image = output["images"][0]
    return str(math.ceil(image["width"] * image["height"] / (1024 * 1024)) * count)


def _parse_logs(value: str | None) -> bool | None:
    """``?logs=`` as Python (true/false) and JS (1/0) clients send it; None when unreadable."""
    if value is None:
        return False
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    return None


def _header_error(name: str, value: str, message: str, error_type: str) -> Response:
    detail = [{"type": error_type, "loc": ["header", name], "msg": message, "input": value}]
    return _json({"detail": detail}, 422)


def _known_endpoint(path: str) -> tuple[EndpointId | None, Response | None]:
    try:
        endpoint = EndpointId.parse(path)
    except ValueError:
        return None, _json({"detail": "Application not found"}, 404)
    if str(endpoint) in INPUT_MODELS:
        return endpoint, None
    if any(EndpointId.parse(known).app == endpoint.app for known in INPUT_MODELS):
        return None, _json({"detail": f"Path /{endpoint.path} not found"}, 404)
    return None, _json({"detail": "Application not found"}, 404)


async def _wait(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait for ``event`` at most ``timeout`` seconds; whether it was set."""
    if timeout is not None and timeout <= 0:
        return event.is_set()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
    return event.is_set()


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat()


# --------------------------------------------------------------------------------------------------
# The app


def build_app(core: Core) -> Starlette:
    """The Starlette app serving fal's protocol from ``core``."""

    def target(request: Request) -> EndpointId | Response:
        """The endpoint a submit or run addresses, or the refusal (bad key, unknown app or path)."""
        if (denied := core.check_key(request)) is not None:
            return denied
        endpoint, missing = _known_endpoint(request.path_params["endpoint"])
        if missing is not None or endpoint is None:
            return missing or _json({"detail": "Application not found"}, 404)
        return endpoint

    async def model_input(
        request: Request, endpoint: EndpointId
    ) -> tuple[Any, FalInput | None, FieldErrors | None]:
        """The body as sent, validated as fal validates it; errors are kept for the result call."""
        arguments, errors = parse_body(await request.body())
        if errors is not None:
            return arguments, None, errors
        validated, errors = validate(
            str(endpoint), arguments, reject_unknown=core.config.reject_unknown_fields
        )
        return arguments, validated, errors

    async def submit(request: Request) -> Response:
        endpoint = target(request)
        if isinstance(endpoint, Response):
            return endpoint
        priority_header = request.headers.get("x-fal-queue-priority")
        if priority_header is not None and priority_header not in ("normal", "low"):
            return _header_error(
                "x-fal-queue-priority", priority_header, "Input should be 'normal' or 'low'", "literal_error"
            )
        start_timeout: float | None = None
        if (timeout_header := request.headers.get("x-fal-request-timeout")) is not None:
            try:
                start_timeout = float(timeout_header)
            except ValueError:
                start_timeout = math.nan
            if not start_timeout > 0 or math.isinf(start_timeout):
                return _header_error(
                    "x-fal-request-timeout",
                    timeout_header,
                    "Input should be a positive number",
                    "greater_than",
                )
        arguments, validated, errors = await model_input(request, endpoint)
        if errors is not None and core.config.validate_at_submit:
            return _json({"detail": errors}, 422)
        job = core.create_job(
            endpoint,
            _origin(request),
            arguments,
            validated,
            errors,
            priority=1 if priority_header == "low" else 0,
            start_timeout=start_timeout,
            webhook_url=request.query_params.get("fal_webhook") or None,
            runner_hint=request.headers.get("x-fal-runner-hint"),
        )
        body = {
            "status": jobs.IN_QUEUE,
            "request_id": job.request_id,
            **job.urls(),
            "logs": None,
            "metrics": {},
            "queue_position": core.store.position(job, job.submitted_at),
            "gateway_request_id": job.request_id,
        }
        return _json(body, 200, job.request_id)

    async def run(request: Request) -> Response:
        endpoint = target(request)
        if isinstance(endpoint, Response):
            return endpoint
        arguments, validated, errors = await model_input(request, endpoint)
        limit = core.config.max_concurrent
        if limit is not None and core.store.running_count(time.monotonic()) >= limit:
            return _json({"detail": "Concurrent requests limit exceeded. Please retry later."}, 429)
        job = core.create_job(
            endpoint,
            _origin(request),
            arguments,
            validated,
            errors,
            runner_hint=request.headers.get("x-fal-runner-hint"),
            sync=True,
        )
        closing = core.closing
        while not job.done.is_set() and not closing.is_set():
            await _wait(core.store.changed, None)
        if not job.done.is_set():
            return _json(
                {"detail": "Server shutting down", "error_type": "internal_error"}, 503, job.request_id
            )
        return await core.result_response(job)

    def status_request(request: Request) -> tuple[jobs.Job, bool] | Response:
        """The job and the ``logs`` flag a status or stream request asks about, or the refusal."""
        if (denied := core.check_key(request)) is not None:
            return denied
        job = core.find_job(request)
        if isinstance(job, Response):
            return job
        with_logs = _parse_logs(request.query_params.get("logs"))
        if with_logs is None:
            return _json({"detail": "Invalid value for 'logs'; use 1/0 or true/false"}, 422, job.request_id)
        return job, with_logs

    async def status(request: Request) -> Response:
        asked = status_request(request)
        if isinstance(asked, Response):
            return asked
        job, with_logs = asked
        return _json(core.store.status_body(job, time.monotonic(), with_logs), 200, job.request_id)

    async def stream(request: Request) -> Response:
        asked = status_request(request)
        if isinstance(asked, Response):
            return asked
        job, with_logs = asked
        headers = {"x-fal-request-id": job.request_id, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(
            _status_events(core, job, with_logs), media_type="text/event-stream", headers=headers
        )

    async def result(request: Request) -> Response:
        if (denied := core.check_key(request)) is not None:
            return denied
        job = core.find_job(request)
        if isinstance(job, Response):
            return job
        core.store.advance(time.monotonic())
        if job.finished_at is None:
            return _json({"detail": "Request is still in progress"}, 400, job.request_id)
        return await core.result_response(job)

    async def cancel(request: Request) -> Response:
        if (denied := core.check_key(request)) is not None:
            return denied
        style = core.config.cancel_style
        job = core.find_job(request)
        if isinstance(job, Response):
            if (
                job.status_code == 404
                and style == "status"
                and core.store.jobs.get(request.path_params["request_id"]) is None
            ):
                return _json({"status": "NOT_FOUND"}, 404)
            return job
        requested = core.store.cancel(job, time.monotonic(), core.config.cancel_in_progress_honoured)
        if style == "openapi":
            return _json({"success": requested}, 200, job.request_id)
        if requested:
            return _json({"status": "CANCELLATION_REQUESTED"}, 202, job.request_id)
        return _json({"status": "ALREADY_COMPLETED"}, 400, job.request_id)

    async def token(request: Request) -> Response:
        if (denied := core.check_key(request)) is not None:
            return denied
        storage_type = request.query_params.get("storage_type", "fal-cdn-v3")
        if storage_type != "fal-cdn-v3":
            return _json({"detail": f"Unsupported storage type {storage_type!r}"}, 400)
        value, expires = core.files.issue_token(core.config.token_ttl_seconds)
        return _json(
            {
                "token": value,
                "token_type": "Bearer",
                "base_url": _origin(request),
                "expires_at": _iso(expires),
            }
        )

    async def upload(request: Request) -> Response:
        if (denied := core.check_token(request)) is not None:
            return denied
        mime = request.headers.get("content-type") or "application/octet-stream"
        key = core.files.new_key(request.headers.get("x-fal-file-name"), mime)
        await core.files.put_stream(key, request.stream(), mime)
        return _json({"access_url": f"{_origin(request)}/files/{key}"})

    async def multipart_create(request: Request) -> Response:
        if (denied := core.check_token(request)) is not None:
            return denied
        mime = request.headers.get("content-type") or "application/octet-stream"
        key, upload_id = core.files.multipart_create(request.headers.get("x-fal-file-name"), mime)
        return _json({"access_url": f"{_origin(request)}/files/{key}", "uploadId": upload_id})

    async def multipart_part(request: Request) -> Response:
        if (denied := core.check_token(request)) is not None:
            return denied
        params = request.path_params
        key = f"{params['bucket']}/{params['name']}"
        number = params["part_number"]
        try:
            etag = await core.files.multipart_part(key, params["upload_id"], number, request.stream())
        except StorageError as exc:
            return _json({"detail": str(exc)}, exc.status)
        return _json({"partNumber": number, "etag": etag}, headers={"ETag": etag})

    async def multipart_complete(request: Request) -> Response:
        if (denied := core.check_token(request)) is not None:
            return denied
        params = request.path_params
        key = f"{params['bucket']}/{params['name']}"
        body, errors = parse_body(await request.body())
        if errors is not None or not isinstance(body, dict):
            return _json({"detail": 'expected a JSON body {"parts": [...]}'}, 400)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(
                None, core.files.multipart_complete, key, params["upload_id"], body.get("parts")
            )
        except StorageError as exc:
            return _json({"detail": str(exc)}, exc.status)
        return _json({"access_url": f"{_origin(request)}/files/{key}"})

    async def initiate(request: Request) -> Response:
        if (denied := core.check_key(request)) is not None:
            return denied
        storage_type = request.query_params.get("storage_type", "gcs")
        if storage_type not in ("gcs", "fal-cdn-v3"):
            return _json({"detail": f"Unsupported storage type {storage_type!r}"}, 400)
        body, errors = parse_body(await request.body())
        if errors is not None or not isinstance(body, dict):
            return _json({"detail": 'expected a JSON body {"file_name", "content_type"}'}, 422)
        mime = str(body.get("content_type") or "application/octet-stream")
        key, upload_id, signature = core.files.signed_create(body.get("file_name"), mime)
        origin = _origin(request)
        return _json(
            {
                "upload_url": f"{origin}/storage/upload/signed/{upload_id}?signature={signature}",
                "file_url": f"{origin}/files/{key}",
            }
        )

    async def signed_put(request: Request) -> Response:
        try:
            await core.files.signed_put(
                request.path_params["upload_id"],
                request.query_params.get("signature", ""),
                request.stream(),
                request.headers.get("content-type"),
            )
        except StorageError as exc:
            return Response(str(exc), exc.status, media_type="text/plain")
        return Response(status_code=200)

    async def file(request: Request) -> Response:
        key = request.path_params["path"]
        stored = core.files.get(key)
        if stored is None and (rendering := core.pending_files.get(key)) is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(rendering)
            stored = core.files.get(key)
        if stored is None:
            return JSONResponse({"detail": "Not Found"}, 404)
        return FileResponse(stored.path, media_type=stored.content_type)

    async def jwks(request: Request) -> Response:
        return JSONResponse(core.signer.jwks())

    routes = [
        Route("/.well-known/jwks.json", _route(core, "jwks", jwks), methods=["GET"]),
        Route(
            "/v1/models/requests/by-endpoint",
            _route(core, "history", functools.partial(request_history, core)),
            methods=["GET"],
        ),
        Route("/storage/auth/token", _route(core, "token", token), methods=["POST"]),
        Route("/storage/upload/initiate", _route(core, "initiate", initiate), methods=["POST"]),
        Route("/storage/upload/signed/{upload_id}", _route(core, "signed_put", signed_put), methods=["PUT"]),
        Route("/files/upload", _route(core, "upload", upload), methods=["POST"]),
        Route(
            "/files/upload/multipart", _route(core, "multipart_create", multipart_create), methods=["POST"]
        ),
        Route(
            "/files/{bucket}/{name}/multipart/{upload_id}/complete",
            _route(core, "multipart_complete", multipart_complete),
            methods=["POST"],
        ),
        Route(
            "/files/{bucket}/{name}/multipart/{upload_id}/{part_number:int}",
            _route(core, "multipart_part", multipart_part),
            methods=["PUT"],
        ),
        Route("/files/{path:path}", _route(core, "file", file), methods=["GET", "HEAD"]),
        Route("/run/{endpoint:path}", _route(core, "run", run), methods=["POST"]),
        Route(
            "/{prefix:path}/requests/{request_id}/status/stream",
            _route(core, "stream", stream),
            methods=["GET"],
        ),
        Route("/{prefix:path}/requests/{request_id}/status", _route(core, "status", status), methods=["GET"]),
        Route("/{prefix:path}/requests/{request_id}/cancel", _route(core, "cancel", cancel), methods=["PUT"]),
        Route("/{prefix:path}/requests/{request_id}", _route(core, "result", result), methods=["GET"]),
        Route("/{endpoint:path}", _route(core, "submit", submit), methods=["POST"]),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _json({"detail": exc.detail}, exc.status_code, headers=dict(exc.headers or {}))

    async def server_error(request: Request, exc: Exception) -> Response:
        return _json({"detail": "Internal server error", "error_type": "internal_error"}, 500)

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


async def _status_events(core: Core, job: jobs.Job, with_logs: bool) -> AsyncIterator[str]:
    """One SSE event per change of the status body, until COMPLETED (or the server stops)."""
    store = core.store
    last: dict[str, Any] | None = None
    last_sent = time.monotonic()
    while True:
        changed = store.changed
        now = time.monotonic()
        body = store.status_body(job, now, with_logs)
        if body != last:
            yield f"data: {json.dumps(body, separators=(',', ':'))}\n\n"
            last, last_sent = body, now
        if job.finished_at is not None or core.closing.is_set():
            return
        if now - last_sent >= _KEEPALIVE_SECONDS:
            yield ": keep-alive\n\n"
            last_sent = now
        due = store.next_view_change(job, now, with_logs)
        horizon = last_sent + _KEEPALIVE_SECONDS
        wake_at = horizon if due is None else min(due, horizon)
        await _wait(changed, wake_at - time.monotonic())
