"""Cancelling a job, on request or because the client stopped waiting, and saying what really happened.

fal removes a queued job (never run, never charged), but only signals a running one, which may stop
(and may still be billed for the time it ran) or finish anyway (and is then paid for and saved). The
answer says which, and a client that merely gave up waiting never throws away a job already running.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio

from fal_flux_mcp.fal import FalError
from fal_flux_mcp.server._journal import JobRecord

if TYPE_CHECKING:
    from fal_flux_mcp.server._jobs import JobService

logger = logging.getLogger("fal_flux_mcp.server")

#: How long a cancel waits for the replica that follows the job to record fal's answer to it.
_HOLDER_RECORDS_SECONDS = 5.0


async def cancel(jobs: JobService, job_id: str, owner: str) -> tuple[JobRecord, bool, str]:
    """Cancel ``owner``'s job on fal. Returns the job, whether the cancel was accepted, and what happened.

    The job is journalled as cancelled only when fal says so: a running job that fal could not
    stop still completes, is paid for, and its images are saved like any other's.
    """
    record = jobs.get(job_id, owner)
    job_id = record.job_id
    if record.is_terminal:
        return record, False, f"The job had already finished ({record.status}); nothing to cancel."
    before = await jobs.fal_for(record.owner).status(jobs.handle(record))
    if before.done:
        record = await jobs.follower.finish_or_wait(job_id)
        return record, False, f"The job had already finished ({record.status}); nothing to cancel."
    was_running = before.status == "IN_PROGRESS"
    answer = await jobs.fal_for(record.owner).cancel(jobs.handle(record))
    if not answer.accepted:
        record = await jobs.follower.finish_or_wait(job_id)
        return record, False, f"The job finished ({record.status}) before the cancel reached it."
    record, _ = await jobs.poll(record)
    if not record.is_terminal and jobs.follower.followed_elsewhere(job_id):  # it records fal's answer
        record = await jobs.follower.wait_for_holder(job_id, anyio.current_time() + _HOLDER_RECORDS_SECONDS)
    if record.status == "cancelled":
        if was_running:  # fal may bill the time it ran: keep the reservation, marked as such
            record = jobs.journal.update(record.job_id, charge="possibly_charged")
            return (
                record,
                True,
                (
                    "Stopped while it was running on fal. No images were made; fal may still bill the "
                    "time it had already run."
                ),
            )
        return record, True, "Cancelled while it was still queued: it never ran and costs nothing."
    if record.is_terminal:
        return record, False, f"The job finished ({record.status}) before the cancel reached it."
    jobs.follow_in_background(record)
    if was_running:
        return (
            record,
            True,
            (
                "The job was already running, so fal was asked to stop it; a running job stops only if "
                "the model allows it. If it finishes anyway it is paid for and its images are saved; "
                "check_status shows the outcome."
            ),
        )
    return (
        record,
        True,
        ("Cancellation requested while the job was queued; check_status shows when fal confirms it."),
    )


async def stop_waiting(jobs: JobService, record: JobRecord) -> None:
    """The client gave up on a call that was waiting for ``record``: cancel the job only if free.

    A queued job is cancelled: it never runs, so it costs nothing. A running job is paid for
    whatever happens now, so it is kept, followed in the background and its images saved. Agent
    frameworks cancel slow calls on their own (openai-agents after 5 s by default), which must not
    throw away an image the user is paying for.
    """
    record = jobs.get(record.job_id)
    if record.is_terminal:
        return
    try:
        status = await jobs.fal_for(record.owner).status(jobs.handle(record))
        queued = status.status == "IN_QUEUE"
    except FalError as exc:  # cannot tell: go by the last state fal reported
        logger.info("could not ask fal about %s before cancelling: %s", record.job_id, exc)
        queued = record.status == "queued"
    if queued:
        try:
            await jobs.fal_for(record.owner).cancel(jobs.handle(record))
            logger.info("the client stopped waiting; cancelled queued job %s on fal", record.job_id)
        except FalError as exc:
            logger.warning("the client stopped waiting; could not cancel job %s: %s", record.job_id, exc)
    else:
        logger.info(
            "the client stopped waiting, but job %s is already running on fal and is paid for: it "
            "is kept and its images will be saved to %s (check_status job_id %s)",
            record.job_id,
            jobs.settings.output_dir,
            record.job_id,
        )
    jobs.follow_in_background(record)
