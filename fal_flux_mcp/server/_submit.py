"""Submitting a job: priced, within the user's limits or approved, reserved, journalled, then sent.

The order is what keeps the user's money and jobs safe: nothing is sent before the intent (with its
reserved cost) is durable in the journal, and the budget check is part of that same write; a lost
answer is looked up in fal's request history, never sent again.
"""

from __future__ import annotations

import functools
import logging
import uuid
from typing import TYPE_CHECKING

import anyio

from fal_flux_mcp.fal import FalError, SubmissionStateUnknownError
from fal_flux_mcp.server._errors import JobError, SpendRefused, reason_of
from fal_flux_mcp.server._inputs import AllowedDirs, journal_arguments, no_dirs
from fal_flux_mcp.server._journal import JobRecord, SubmitIntent
from fal_flux_mcp.server._schemas import GenerationParams

if TYPE_CHECKING:
    from fal_flux_mcp.server._jobs import JobService

logger = logging.getLogger("fal_flux_mcp.server")


async def submit(
    jobs: JobService,
    params: GenerationParams,
    owner: str,
    *,
    allowed_dirs: AllowedDirs = no_dirs,
    webhook_url: str | None = None,
    approval: str | None = None,
) -> JobRecord:
    """Submit to fal and journal the job before returning: from here on the job is never lost.

    The submission is journalled as an intent, with its cost reserved, before it is sent, and the
    intent becomes the job when fal answers. Unless the user ``approval`` covers it, the call must
    fit the user's limits, checked in the same transaction as the reservation. If fal's answer is
    lost, the intent is looked up in fal's request history (``_reconcile``) rather than sent
    again: a second submit could be a second payment. The job, its cost and its limits are ``owner``'s.
    """
    prepared = await jobs.inputs.prepare(params, allowed_dirs, owner)
    model, fal_input = prepared.model, prepared.fal_input
    quote = await jobs.prices.quote(model, fal_input, prepared.input_sizes)
    approved = approval == "approved by the user"
    reason = (
        None if approved else jobs.ledger.over_limit(quote.cost_usd, owner, max_cost_usd=params.max_cost_usd)
    )
    if reason is not None:
        raise SpendRefused(f"Not submitted, nothing was spent: {reason}.")
    intent = SubmitIntent(
        intent_id=uuid.uuid4().hex,
        owner=owner,
        endpoint_id=model.endpoint_id,
        arguments=fal_input.model_dump(mode="json", exclude_none=True),
        prompt=params.prompt,
        cost_usd=quote.cost_usd,
        webhook_url=webhook_url,
        unit_price=quote.unit_price,
        price_source=quote.source,
        approval=approval or "within the limits",
        input_megapixels=quote.input_megapixels,
    )
    # The journal syncs these two writes to disk: in a worker thread, the wait does not hold up the
    # other calls in flight (two hundred submissions at once would otherwise queue behind each fsync).
    # Shielded, so that a client giving up meanwhile is noticed at the next step, which knows what to
    # do (the submit below, or following the job), not between a write and its use.
    try:
        with anyio.CancelScope(shield=True):
            refusal = await anyio.to_thread.run_sync(
                functools.partial(jobs.ledger.reserve, intent, approved=approved)
            )
    except Exception as exc:  # nothing was sent: better no job than one nobody could find again
        logger.exception("could not journal a submission")
        raise JobError(
            f"The job journal in {jobs.settings.state_dir} cannot be written ({reason_of(exc)}), so "
            "nothing was sent to fal. Free some disk space or set FLUX_MCP_STATE_DIR to a writable folder."
        ) from None
    if refusal is not None:
        raise SpendRefused(
            f"Not submitted, nothing was spent: {refusal}; other calls used the budget meanwhile. Call "
            "again to be asked."
        )
    try:
        handle = await jobs.fal_for(intent.owner).submit(
            model.endpoint_id, fal_input, webhook_url=webhook_url
        )
    except SubmissionStateUnknownError as exc:
        jobs.reconcile_in_background(intent)
        raise JobError(
            f"{exc.message.rstrip('.')}. The submission is being looked up in fal's request history: "
            "if fal queued it, it becomes a job that is followed and saved like any other, and "
            "check_status lists it. Do not submit it again: that could pay for it twice."
        ) from None
    except FalError:
        jobs.journal.drop_intent(intent.intent_id)  # fal refused it, or it never left this machine
        raise
    except BaseException:  # the client gave up with the request in flight: fal may have it, queued
        jobs.reconcile_in_background(intent, abandoned=True)
        raise
    record = JobRecord(
        job_id=handle.request_id,
        owner=owner,
        endpoint_id=handle.endpoint_id,
        status_url=handle.status_url,
        response_url=handle.response_url,
        cancel_url=handle.cancel_url,
        arguments=journal_arguments(intent.arguments),
        prompt=params.prompt,
        status="queued",
        queue_position=handle.queue_position,
        cost_usd=intent.cost_usd,
        webhook_url=webhook_url,
        created_at=intent.created_at,
        unit_price=intent.unit_price,
        price_source=intent.price_source,
        approval=intent.approval,
        input_megapixels=intent.input_megapixels,
    )
    try:
        with anyio.CancelScope(shield=True):
            journal_it = functools.partial(
                jobs.journal.fulfil_intent,
                intent.intent_id,
                record,
                holder=jobs.follower.holder,  # this replica follows what it submits
                lease_seconds=jobs.settings.lease_seconds,
            )
            await anyio.to_thread.run_sync(journal_it)
    except Exception as exc:
        logger.exception("could not journal job %s", record.job_id)
        raise JobError(
            f"fal accepted the job (job_id {record.job_id}) but it could not be recorded locally "
            f"({reason_of(exc)}); keep the job_id: check_status still needs it."
        ) from None
    return record
