"""Finding a user's job by the id they give: theirs only, and another's answered as one never made.

Every lookup a user makes (a tool's ``job_id``, a ``flux://`` URI, a previous result used as an input)
comes through here with the user as ``owner``. A job of someone else's gets the very answer a made-up id
gets (same text, same error), so ids cannot be probed; the server's own work (following, saving) looks
jobs up without an owner.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from fal_flux_mcp.server._errors import JobError, UnknownJobError
from fal_flux_mcp.server._journal import JobRecord
from fal_flux_mcp.server._schemas import ImageInfo, JobResult

if TYPE_CHECKING:
    from fal_flux_mcp.server._jobs import JobService

logger = logging.getLogger("fal_flux_mcp.server")


def unknown_job(jobs: JobService, job_id: str, owner: str | None) -> UnknownJobError:
    """The answer to an id ``owner`` has no job under: their recent ids, to show what ids look like."""
    recent = ", ".join(r.job_id for r in jobs.journal.recent(3, owner)) or "none yet"
    unconfirmed = [intent for intent in jobs.journal.intents(owner) if intent.state == "unconfirmed"]
    also = (
        f" {len(unconfirmed)} submission(s) are unconfirmed: fal may have queued them, but this "
        "key cannot read fal's request history to tell (see fal.ai/dashboard/requests)."
        if unconfirmed
        else ""
    )
    return UnknownJobError(
        f"No job {job_id!r} was submitted through this fal-flux-mcp (recent job ids: {recent}). Use the "
        f"job_id that generate_image or submit_job returned.{also}"
    )


async def find(jobs: JobService, job_id: str, owner: str) -> JobRecord:
    """``owner``'s journalled job; an id not journalled yet may be one of their submissions still being
    reconciled, so those are looked up in fal's history first."""
    if jobs.journal.get(job_id.strip(), owner) is None:
        for intent in jobs.journal.intents(owner):
            if intent.state != "pending":
                continue
            try:
                _, record = await jobs.reconciler.reconcile(intent)
            except Exception:  # one submission that cannot be looked up must not hide the others
                logger.exception("could not reconcile submission %s", intent.intent_id)
                continue
            if record is not None:
                jobs.follow_in_background(record)
    return jobs.get(job_id, owner)


def image_of(jobs: JobService, job_id: str, index: int, owner: str) -> ImageInfo:
    """Image ``index`` of ``owner``'s completed job (``flux://images/{job_id}/{index}``); a ``JobError`` if none."""
    record = jobs.get(job_id, owner)
    if record.status != "completed" or not record.result:
        raise JobError(
            f"job {record.job_id} is {record.status}, so it has no images to use yet"
            + (": call check_status with its job_id first." if not record.is_terminal else ".")
        )
    images = JobResult.model_validate(record.result).images
    if not 0 <= index < len(images):
        raise JobError(f"job {record.job_id} has {len(images)} image(s): index {index} does not exist.")
    return images[index]
