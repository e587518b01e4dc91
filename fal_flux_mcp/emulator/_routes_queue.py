"""fal's queue and run routes: submit, status (polled or streamed), result, cancel, and ``/run``.

A queue request is addressed as ``/<endpoint>`` to submit and ``/<prefix>/requests/<id>[/...]``
afterwards; ``/run/<endpoint>`` answers in the same call, as ``fal.run`` does. The handlers check the
key, read the headers and body as fal reads them, and leave the job itself to ``Core``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from fal_flux_mcp.emulator import _jobs as jobs
from fal_flux_mcp.emulator._auth import account, check_key
from fal_flux_mcp.emulator._core import Core, wait_until_set
from fal_flux_mcp.emulator._responses import json_response, request_origin, with_faults
from fal_flux_mcp.emulator._validation import FieldErrors, parse_body, validate
from fal_flux_mcp.fal._urls import EndpointId
from fal_flux_mcp.models import INPUT_MODELS, FalInput

_KEEPALIVE_SECONDS = 15.0


def queue_routes(core: Core) -> list[Route]:
    """The queue and run routes, in matching order: ``/run/...`` first, the catch-all submit last.

    The ``/<prefix>/requests/<id>`` patterns match any path, so routes that must win over them (fal's
    request history, ``/files/...``) belong before this list.
    """

    def target(request: Request) -> EndpointId | Response:
        """The endpoint a submit or run addresses, or the refusal (bad key, unknown app or path)."""
        if (denied := check_key(core.config, request)) is not None:
            return denied
        endpoint, missing = _known_endpoint(request.path_params["endpoint"])
        if missing is not None or endpoint is None:
            return missing or json_response({"detail": "Application not found"}, 404)
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
            return json_response({"detail": errors}, 422)
        job = core.create_job(
            endpoint,
            request_origin(request),
            arguments,
            validated,
            errors,
            priority=1 if priority_header == "low" else 0,
            start_timeout=start_timeout,
            webhook_url=request.query_params.get("fal_webhook") or None,
            runner_hint=request.headers.get("x-fal-runner-hint"),
            account=account(request),
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
        return json_response(body, 200, job.request_id)

    async def run(request: Request) -> Response:
        endpoint = target(request)
        if isinstance(endpoint, Response):
            return endpoint
        arguments, validated, errors = await model_input(request, endpoint)
        limit = core.config.max_concurrent
        if limit is not None and core.store.running_count(time.monotonic()) >= limit:
            return json_response({"detail": "Concurrent requests limit exceeded. Please retry later."}, 429)
        job = core.create_job(
            endpoint,
            request_origin(request),
            arguments,
            validated,
            errors,
            runner_hint=request.headers.get("x-fal-runner-hint"),
            sync=True,
            account=account(request),
        )
        closing = core.closing
        while not job.done.is_set() and not closing.is_set():
            await wait_until_set(core.store.changed, None)
        if not job.done.is_set():
            return json_response(
                {"detail": "Server shutting down", "error_type": "internal_error"}, 503, job.request_id
            )
        return await core.result_response(job)

    def status_request(request: Request) -> tuple[jobs.Job, bool] | Response:
        """The job and the ``logs`` flag a status or stream request asks about, or the refusal."""
        if (denied := check_key(core.config, request)) is not None:
            return denied
        job = find_job(core, request)
        if isinstance(job, Response):
            return job
        with_logs = _parse_logs(request.query_params.get("logs"))
        if with_logs is None:
            return json_response(
                {"detail": "Invalid value for 'logs'; use 1/0 or true/false"}, 422, job.request_id
            )
        return job, with_logs

    async def status(request: Request) -> Response:
        asked = status_request(request)
        if isinstance(asked, Response):
            return asked
        job, with_logs = asked
        return json_response(core.store.status_body(job, time.monotonic(), with_logs), 200, job.request_id)

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
        if (denied := check_key(core.config, request)) is not None:
            return denied
        job = find_job(core, request)
        if isinstance(job, Response):
            return job
        core.store.advance(time.monotonic())
        if job.finished_at is None:
            return json_response({"detail": "Request is still in progress"}, 400, job.request_id)
        return await core.result_response(job)

    async def cancel(request: Request) -> Response:
        if (denied := check_key(core.config, request)) is not None:
            return denied
        style = core.config.cancel_style
        job = find_job(core, request)
        if isinstance(job, Response):
            if (
                job.status_code == 404
                and style == "status"
                and core.store.jobs.get(request.path_params["request_id"]) is None
            ):
                return json_response({"status": "NOT_FOUND"}, 404)
            return job
        requested = core.store.cancel(job, time.monotonic(), core.config.cancel_in_progress_honoured)
        if style == "openapi":
            return json_response({"success": requested}, 200, job.request_id)
        if requested:
            return json_response({"status": "CANCELLATION_REQUESTED"}, 202, job.request_id)
        return json_response({"status": "ALREADY_COMPLETED"}, 400, job.request_id)

    return [
        Route("/run/{endpoint:path}", with_faults(core, "run", run), methods=["POST"]),
        Route(
            "/{prefix:path}/requests/{request_id}/status/stream",
            with_faults(core, "stream", stream),
            methods=["GET"],
        ),
        Route(
            "/{prefix:path}/requests/{request_id}/status",
            with_faults(core, "status", status),
            methods=["GET"],
        ),
        Route(
            "/{prefix:path}/requests/{request_id}/cancel",
            with_faults(core, "cancel", cancel),
            methods=["PUT"],
        ),
        Route("/{prefix:path}/requests/{request_id}", with_faults(core, "result", result), methods=["GET"]),
        Route("/{endpoint:path}", with_faults(core, "submit", submit), methods=["POST"]),
    ]


def find_job(core: Core, request: Request) -> jobs.Job | Response:
    """The job a ``.../requests/<id>`` URL names, or fal's refusal: unknown id, other app, wrong form."""
    job = core.store.jobs.get(request.path_params["request_id"])
    prefix = request.path_params["prefix"].strip("/")
    if job is None or not job.served_under(prefix) or job.account != account(request):
        return json_response({"detail": "Request not found"}, 404)
    routes = core.config.request_routes
    if job.endpoint.path and routes == "app" and prefix == job.endpoint_id:
        return json_response({"detail": "Method Not Allowed"}, 405)
    if job.endpoint.path and routes == "full_path" and prefix == job.endpoint.app:
        return JSONResponse({"error": "Error", "message": f"Path /{job.endpoint.path} not found"}, 404)
    return job


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
    return json_response({"detail": detail}, 422)


def _known_endpoint(path: str) -> tuple[EndpointId | None, Response | None]:
    try:
        endpoint = EndpointId.parse(path)
    except ValueError:
        return None, json_response({"detail": "Application not found"}, 404)
    if str(endpoint) in INPUT_MODELS:
        return endpoint, None
    if any(EndpointId.parse(known).app == endpoint.app for known in INPUT_MODELS):
        return None, json_response({"detail": f"Path /{endpoint.path} not found"}, 404)
    return None, json_response({"detail": "Application not found"}, 404)


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
        await wait_until_set(changed, wake_at - time.monotonic())
