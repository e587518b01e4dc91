"""Finding a submission whose answer never made it into the journal, in fal's own request history.

Every submission is journalled as an intent before it is sent. When fal's answer is lost (the server was
killed between fal's answer and the journal write, the connection dropped, fal answered 5xx after
queueing), the intent is left over. fal may have queued the job, and it is paid for if so; submitting
again could pay twice. So the intent is looked up instead: fal's request history for the endpoint,
over a window around the intent's time, is searched for a request whose input is exactly the one sent.

- Found: it becomes a journalled job, followed like any other.
- Not found once the window has closed: fal never received it; the intent is dropped, and the log
  says why.
- The key may not read the history (403): the intent is kept as an "unconfirmed submission", shown by
  ``check_status``, and looked up again at the next start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

from fal_flux_mcp.fal import FalError, HistoryItem
from fal_flux_mcp.server._inputs import journal_arguments
from fal_flux_mcp.server._journal import JobRecord, Journal, SubmitIntent

if TYPE_CHECKING:
    from fal_flux_mcp.fal import FalClient

logger = logging.getLogger("fal_flux_mcp.server")

Outcome = Literal["found", "dropped", "unconfirmed", "waiting"]

#: How far before the intent's time fal's clock may put the request (clocks differ).
_CLOCK_SKEW = timedelta(seconds=60)


class Reconciler:
    """Turns leftover intents into jobs, or drops them once fal's history shows they never arrived."""

    def __init__(
        self,
        journal: Journal,
        fal: Callable[[str], FalClient],
        *,
        window: timedelta,
    ) -> None:
        self.journal = journal
        self._fal = fal
        self.window = window

    async def reconcile(self, intent: SubmitIntent) -> tuple[Outcome, JobRecord | None]:
        """Look ``intent`` up once; the outcome, and the job when it was found."""
        now = datetime.now(UTC)
        closes = intent.created_at + self.window
        try:
            items = await self._fal(intent.owner).platform.request_history(
                intent.endpoint_id,
                start=intent.created_at - _CLOCK_SKEW,
                end=min(closes, now) + _CLOCK_SKEW,
            )
        except FalError as exc:
            if exc.status_code in (401, 403):
                note = (
                    "fal's request history cannot be read with this key, so whether fal queued this "
                    "submission is unknown; see fal.ai/dashboard/requests. Do not submit it again."
                )
                self.journal.update_intent(intent.intent_id, state="unconfirmed", note=note)
                logger.warning("submission %s is unconfirmed: %s", intent.intent_id, exc)
                return "unconfirmed", None
            logger.info("could not read fal's request history for %s yet: %s", intent.intent_id, exc)
            return "waiting", None
        item = self._match(intent, items)
        if item is not None:
            record = self._record(intent, item)
            if self.journal.fulfil_intent(intent.intent_id, record):
                logger.info("found submission %s in fal's history: job %s", intent.intent_id, record.job_id)
            return "found", self.journal.get(record.job_id)
        if now > closes:
            self.journal.drop_intent(intent.intent_id)
            logger.warning(
                "submission %s (%s, sent %s) is not in fal's request history %d s later: fal never "
                "received it, so nothing was charged; dropped",
                intent.intent_id,
                intent.endpoint_id,
                intent.created_at.isoformat(timespec="seconds"),
                self.window.total_seconds(),
            )
            return "dropped", None
        return "waiting", None

    def _match(self, intent: SubmitIntent, items: list[HistoryItem]) -> HistoryItem | None:
        """The request fal recorded for this intent: the same input, not already a journalled job.

        Two identical submissions each take a different request; the one sent closest to the intent's
        time is taken first.
        """
        candidates = [
            item
            for item in items
            if item.json_input == intent.arguments and self.journal.get(item.request_id) is None
        ]
        return min(candidates, key=lambda item: _distance(item, intent), default=None)

    def _record(self, intent: SubmitIntent, item: HistoryItem) -> JobRecord:
        handle = self._fal(intent.owner).handle(intent.endpoint_id, item.request_id)
        return JobRecord(
            job_id=item.request_id,
            owner=intent.owner,
            endpoint_id=intent.endpoint_id,
            status_url=handle.status_url,
            response_url=handle.response_url,
            cancel_url=handle.cancel_url,
            arguments=journal_arguments(dict(intent.arguments)),
            prompt=intent.prompt,
            status="queued",
            cost_usd=intent.cost_usd,
            webhook_url=intent.webhook_url,
            created_at=intent.created_at,
        )


def _distance(item: HistoryItem, intent: SubmitIntent) -> float:
    try:
        sent = datetime.fromisoformat(item.sent_at or "")
    except ValueError:
        return float("inf")
    if sent.tzinfo is None:
        sent = sent.replace(tzinfo=UTC)
    return abs((sent - intent.created_at).total_seconds())
