"""How a job becomes what an MCP client sees: progress notifications while it runs, then the tool result.

The result is short text for the model, the previews it can see, links to the full images and the job,
and the structured JSON (``JobResult``) with everything; a failed job is a tool error that says what
to do next.
"""

from __future__ import annotations

import base64

from mcp.server.mcpserver import Context
from mcp.types import Annotations, CallToolResult, ContentBlock, ImageContent, ResourceLink, TextContent

from fal_flux_mcp.fal import QueueStatus
from fal_flux_mcp.server._app import AppState
from fal_flux_mcp.server._journal import JobRecord
from fal_flux_mcp.server._ledger import usd
from fal_flux_mcp.server._schemas import JobResult, image_name, job_uri


class Progress:
    """Turns fal's queue positions and log lines into MCP progress notifications (always increasing)."""

    def __init__(self, ctx: Context[AppState]) -> None:
        self._ctx = ctx
        self._step = 0
        self._seen_logs = 0
        self._last: str | None = None

    async def say(self, message: str) -> None:
        """Send ``message`` as the next step, unless it repeats the last one."""
        if message == self._last:
            return
        self._last = message
        self._step += 1
        await self._ctx.report_progress(self._step, None, message)

    async def on_status(self, status: QueueStatus) -> None:
        """Report a status from fal: the queue position, then each new log line."""
        if status.status == "IN_QUEUE":
            await self.say(f"Queued on fal, position {status.queue_position}")
        elif status.status == "IN_PROGRESS":
            logs = status.logs or []
            if len(logs) < self._seen_logs:  # a stream that sends only new lines per event
                self._seen_logs = 0
            if not logs[self._seen_logs :]:
                await self.say("Generating")
            for entry in logs[self._seen_logs :]:
                await self.say(f"fal: {entry.message}")
            self._seen_logs = len(logs)
        else:
            await self.say("Finished on fal; downloading the images")


async def job_result(
    state: AppState, record: JobRecord, *, result: JobResult | None = None
) -> CallToolResult:
    """The tool result for a job: short text, previews the model can see, links, and the structured JSON."""
    result = result or state.jobs.describe(record)
    day_left, month_left = state.jobs.ledger.left(record.owner)
    result = result.model_copy(
        update={
            "cost_usd": record.cost_usd,
            "price_source": record.price_source,
            "approval": record.approval,
            "budget_left_today_usd": None if day_left is None else round(day_left, 6),
            "budget_left_month_usd": None if month_left is None else round(month_left, 6),
        }
    )
    if result.status == "failed":
        return CallToolResult(
            content=[TextContent(text=f"Job {result.job_id} failed: {with_hint(result.error)}")],
            structured_content=result.model_dump(mode="json"),
            is_error=True,
        )
    lines = [f"Job {result.job_id}: {result.status}. {result.message}"]
    for image in result.images:
        where = f" saved at {image.path}" if image.path else ""
        lines.append(f"- image {image.index + 1}: {image.url}{where} ({image.width}x{image.height})")
    if result.cost_usd is not None:
        kind = "Cost" if result.status == "completed" else "Estimated cost"
        source = f" ({result.price_source})" if result.price_source else ""
        left = "" if day_left is None else f"; {usd(day_left)} left of today's budget"
        lines.append(f"{kind}: {usd(result.cost_usd)}{source}{left}")
    for unconfirmed in result.unconfirmed_submissions or []:
        lines.append(
            f"Unconfirmed submission ({unconfirmed.model}, {unconfirmed.submitted_at:%Y-%m-%d %H:%M} UTC, "
            f"{unconfirmed.prompt[:60]!r}): {unconfirmed.note}"
        )
    content: list[ContentBlock] = [TextContent(text="\n".join(lines))]
    if result.status == "completed":
        for preview in await state.jobs.previews(record):
            content.append(
                ImageContent(
                    data=base64.b64encode(preview.data).decode("ascii"),
                    mime_type=preview.mime_type,
                    annotations=Annotations(audience=["user", "assistant"], priority=0.9),
                )
            )
        for image in result.images:
            content.append(
                ResourceLink(
                    uri=image.resource_uri,
                    name=image_name(result.job_id, image.index, image.path),
                    mime_type=image.content_type,
                    description=f"Full-resolution image {image.index + 1} of job {result.job_id}",
                )
            )
    else:
        content.append(
            ResourceLink(
                uri=job_uri(result.job_id), name=f"job {result.job_id}", mime_type="application/json"
            )
        )
    return CallToolResult(content=content, structured_content=result.model_dump(mode="json"))


def with_hint(error: str | None) -> str:
    """The failure, with what to do next unless fal's message already says it."""
    text = (error or "unknown error").rstrip(". ") + "."
    if "rephrase" not in text.lower():
        text += " Check the parameters and try again; this failed job costs nothing more."
    return text
