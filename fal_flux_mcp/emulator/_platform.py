"""fal's platform API on the emulator: the request history and the pricing.

The server looks a submission up in the history (``/v1/models/requests/by-endpoint``) when its answer
was lost, and reads the pricing (``/v1/models/pricing``) to quote what a call will cost. Like fal, both
need a key and may be refused to a key without the permission (``EmulatorConfig.history_permission``,
``EmulatorConfig.pricing_permission``: 403). History items carry ``request_id``, ``endpoint_id``,
``sent_at``, ``started_at`` and ``status``, and with ``expand=payloads`` the request's ``json_input``
as it was received. Prices come from ``EmulatorConfig.prices``, each with fal's ``"unit": "image"``
whatever the model is billed by.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from fal_flux_mcp.emulator import _jobs as jobs
from fal_flux_mcp.emulator._auth import account, check_key
from fal_flux_mcp.emulator._responses import iso_time

if TYPE_CHECKING:
    from fal_flux_mcp.emulator._core import Core

_MAX_LIMIT = 100


def _time(value: str | None) -> float | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def _item(job: jobs.Job, payloads: bool) -> dict[str, Any]:
    item: dict[str, Any] = {
        "request_id": job.request_id,
        "endpoint_id": job.endpoint_id,
        "sent_at": iso_time(job.submitted_at + job.wall_offset),
        "started_at": None if job.started_at is None else iso_time(job.started_at + job.wall_offset),
        "status": "success" if job.finished_at is not None and job.outcome == jobs.OK else job.state,
    }
    if payloads:
        item["json_input"] = job.arguments
    return item


async def request_history(core: Core, request: Request) -> Response:
    """The requests this emulator received for one endpoint in a time window, oldest first, paged."""
    if (denied := check_key(core.config, request)) is not None:
        return denied
    if not core.config.history_permission:
        return JSONResponse(
            {"detail": "This API key does not have permission to read request history."}, status_code=403
        )
    query = request.query_params
    endpoint_id = query.get("endpoint_id")
    if not endpoint_id:
        return JSONResponse({"detail": "endpoint_id is required"}, status_code=422)
    try:
        start, end = _time(query.get("start")), _time(query.get("end"))
        limit = min(_MAX_LIMIT, max(1, int(query.get("limit", "50"))))
        offset = int(query.get("cursor") or 0)
    except ValueError as exc:
        return JSONResponse({"detail": f"invalid query: {exc}"}, status_code=422)
    now = time.time()
    found = [
        job
        for job in sorted(core.store.jobs.values(), key=lambda job: job.submitted_at)
        if job.endpoint_id == endpoint_id
        and not job.sync
        and job.account == account(request)
        and (start is None or job.submitted_at + job.wall_offset >= start)
        and (end is None or job.submitted_at + job.wall_offset <= min(end, now))
    ]
    page = found[offset : offset + limit]
    more = offset + limit < len(found)
    return JSONResponse(
        {
            "items": [_item(job, query.get("expand") == "payloads") for job in page],
            "has_more": more,
            "next_cursor": str(offset + limit) if more else None,
        }
    )


async def pricing(core: Core, request: Request) -> Response:
    """The unit price of each asked-for endpoint, in fal's shape; ids without a price are left out.

    ``endpoint_id`` is a comma-separated list (or repeated). The unit is always ``image``, as fal
    answers even for per-megapixel models: a client must not take its unit from here. One page.
    """
    if (denied := check_key(core.config, request)) is not None:
        return denied
    if not core.config.pricing_permission:
        return JSONResponse(
            {"detail": "This API key does not have permission to read pricing."}, status_code=403
        )
    asked = [
        endpoint_id.strip()
        for value in request.query_params.getlist("endpoint_id")
        for endpoint_id in value.split(",")
        if endpoint_id.strip()
    ]
    if not asked:
        return JSONResponse({"detail": "endpoint_id is required"}, status_code=422)
    known = core.config.prices
    return JSONResponse(
        {
            "prices": [
                {
                    "endpoint_id": endpoint_id,
                    "unit_price": known[endpoint_id],
                    "unit": "image",
                    "currency": "USD",
                }
                for endpoint_id in dict.fromkeys(asked)
                if endpoint_id in known
            ],
            "next_cursor": None,
            "has_more": False,
        }
    )
