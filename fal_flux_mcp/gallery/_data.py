"""What the gallery shows, read from the job journal: recent images, one job in full, spend by day and model.

The same data serves the web gallery inside the HTTP server and ``fal-flux-mcp gallery`` next to a stdio
server: both read the journal file the MCP server writes, so neither needs the other running.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import anyio

from fal_flux_mcp.server._jobs import JobService
from fal_flux_mcp.server._journal import JobRecord, open_journal
from fal_flux_mcp.server._overview import described, recent
from fal_flux_mcp.server._schemas import GenerationParams
from fal_flux_mcp.settings import Settings

__all__ = [
    "RECENT_JOBS",
    "DaySpend",
    "JobsSource",
    "described",
    "finished_since",
    "latest_finish",
    "logs",
    "recent",
    "spend_by_day",
    "tool_call",
]

#: How many jobs the grid shows.
RECENT_JOBS = 60
#: How long the job page waits for fal's logs before showing the page without them.
LOGS_SECONDS = 5.0


class JobsSource:
    """The jobs the gallery shows: a running server's, else its own view of the same journal.

    A server over SSE opens its state only while a client is connected, and ``fal-flux-mcp gallery``
    has no server at all; both then read the journal file directly (shared safely between processes).
    """

    def __init__(self, settings: Settings, live: Callable[[], JobService | None] | None = None) -> None:
        self._settings = settings
        self._live = live
        self._own: JobService | None = None

    def __call__(self) -> JobService:
        service = self._live() if self._live else None
        if service is not None:
            return service
        if self._own is None:
            self._own = JobService(self._settings, open_journal(self._settings))
        return self._own

    async def aclose(self) -> None:
        """Close the journal and fal client this opened, if any."""
        if self._own is not None:
            own, self._own = self._own, None
            await own.aclose()
            own.journal.close()


def finished_since(jobs: JobService, owner: str, since: str) -> tuple[list[str], str]:
    """``owner``'s jobs completed after ``since`` (journal time text), oldest first, and the new ``since``."""
    rows = jobs.journal.read(
        "SELECT job_id, completed_at FROM jobs WHERE status = 'completed' AND owner = ? AND completed_at > ? "
        "ORDER BY completed_at",
        (owner, since),
    )
    return [row["job_id"] for row in rows], (rows[-1]["completed_at"] if rows else since)


def latest_finish(jobs: JobService, owner: str) -> str:
    """The journal time of ``owner``'s latest completion ('' when none): where a live update starts from."""
    rows = jobs.journal.read(
        "SELECT MAX(completed_at) AS t FROM jobs WHERE status = 'completed' AND owner = ?", (owner,)
    )
    return rows[0]["t"] or ""


def tool_call(record: JobRecord, seed: int | None) -> str:
    """The generate_image call that makes this job again (same arguments, the seed it used), as JSON."""
    accepted = set(GenerationParams.model_fields)
    arguments: dict[str, Any] = {"prompt": record.prompt, "model": record.endpoint_id}
    for name, value in record.arguments.items():
        if name in accepted and name not in arguments and value is not None:
            arguments[name] = value
    if seed is not None:
        arguments["seed"] = seed
    return json.dumps({"name": "generate_image", "arguments": arguments}, indent=2, ensure_ascii=False)


async def logs(jobs: JobService, record: JobRecord) -> tuple[list[str], str | None]:
    """fal's log lines for the job, or why they could not be fetched (they are kept by fal, not here)."""
    try:
        with anyio.fail_after(LOGS_SECONDS):
            status = await jobs.fal_for(record.owner).status(JobService.handle(record), logs=True)
    except TimeoutError:
        return [], f"fal did not answer within {LOGS_SECONDS:g} s"
    except Exception as exc:  # no key, fal down, the job forgotten: the page still shows the rest
        return [], f"fal's logs could not be fetched ({getattr(exc, 'message', None) or type(exc).__name__})"
    return [entry.message for entry in status.logs or []], None


@dataclass
class DaySpend:
    """What was spent on one local calendar day, by model (released amounts left out)."""

    day: date
    by_model: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.by_model.values())


def spend_by_day(jobs: JobService, owner: str, days: int = 30) -> list[DaySpend]:
    """``owner``'s spend per local day and model over the last ``days`` days, newest first (days with none
    left out)."""
    since = (datetime.now(UTC) - timedelta(days=days)).isoformat(timespec="microseconds")
    rows = jobs.journal.read(
        "SELECT endpoint_id, cost_usd, created_at FROM jobs WHERE owner = ? AND created_at >= ? "
        "AND charge != 'released' AND cost_usd IS NOT NULL "
        # Jobs pruned by FLUX_MCP_KEEP_DAYS count too, from the sums kept per quarter hour.
        "UNION ALL SELECT endpoint_id, cost_usd, bucket FROM spend WHERE owner = ? AND bucket >= ? "
        "AND charge != 'released'",
        (owner, since, owner, since),
    )
    by_day: dict[date, DaySpend] = {}
    for row in rows:
        day = datetime.fromisoformat(row["created_at"]).astimezone().date()
        spend = by_day.setdefault(day, DaySpend(day))
        spend.by_model[row["endpoint_id"]] = spend.by_model.get(row["endpoint_id"], 0.0) + row["cost_usd"]
    return sorted(by_day.values(), key=lambda spend: spend.day, reverse=True)
