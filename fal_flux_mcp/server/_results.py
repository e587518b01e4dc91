"""What the tools say about a job: its structured result, and the sentence that tells what to do next.

Built from the journal's record alone, so a job reads the same from ``generate_image``, ``check_status``
and the ``flux://jobs/{job_id}`` resource, before and after a restart.
"""

from __future__ import annotations

from fal_flux_mcp.models import FluxOutput
from fal_flux_mcp.server._journal import JobRecord
from fal_flux_mcp.server._schemas import ImageInfo, JobResult, JobState, job_uri
from fal_flux_mcp.settings import Settings


def describe(
    record: JobRecord, settings: Settings, *, logs: list[str] | None = None, waited: float | None = None
) -> JobResult:
    """The structured view of a job in any state; a completed job's stored result is served as built."""
    if record.status == "completed" and record.result:
        result = JobResult.model_validate(record.result)
        return result.model_copy(update={"logs": logs}) if logs else result
    return job_result(record, record.status, [], settings, logs=logs, waited=waited)


def job_result(
    record: JobRecord,
    status: JobState,
    images: list[ImageInfo],
    settings: Settings,
    *,
    output: FluxOutput | None = None,
    logs: list[str] | None = None,
    waited: float | None = None,
) -> JobResult:
    """The result of ``record`` in ``status``; ``output`` is fal's, once the job completed."""
    seed = output.seed if output is not None else record.arguments.get("seed")
    return JobResult(
        job_id=record.job_id,
        status=status,
        model=record.endpoint_id,
        prompt=(output.prompt if output is not None and output.prompt else record.prompt),
        seed=seed if isinstance(seed, int) else None,
        cost_usd=record.cost_usd,
        images=images,
        queue_position=record.queue_position if status == "queued" else None,
        resource_uri=job_uri(record.job_id),
        message=message(record, status, images, settings, waited=waited),
        error=record.error,
        logs=logs or None,
        created_at=record.created_at,
        completed_at=record.completed_at,
    )


def has_pending_saves(images: list[ImageInfo]) -> bool:
    """Whether an image still waits to be saved (and saving must be retried)."""
    return any(image.save_state == "pending" for image in images)


def message(
    record: JobRecord,
    status: JobState,
    images: list[ImageInfo],
    settings: Settings,
    *,
    waited: float | None = None,
) -> str:
    """What happened to the job, and what the caller should do next."""
    if status == "completed":
        saved = [i.path for i in images if i.path]
        flagged = sum(1 for i in images if i.nsfw)
        text = f"Generated {len(images)} image(s)"
        text += f", saved to {', '.join(saved)}." if saved else "."
        for image in images:
            if image.save_state == "pending":
                text += (
                    f" Image {image.index + 1} is not saved yet ({image.save_error}); it will be saved in "
                    f"{settings.output_dir} as soon as that works (retried in the background, at each "
                    "check_status and at the next start). Until then use its URL."
                )
            elif image.save_state == "gone":
                text += f" Image {image.index + 1} can no longer be saved: {image.save_error}."
        if flagged:
            text += f" {flagged} image(s) were flagged NSFW by fal and are blacked out; rephrase to avoid it."
        return text
    if status == "failed":
        return f"The job failed: {record.error}"
    if status == "cancelled":
        return "The job was cancelled."
    where = "is queued" + (
        f" at position {record.queue_position}" if record.queue_position is not None else ""
    )
    if status == "in_progress":
        where = "is running"
    if waited is not None:
        return (
            f"The job {where} after {waited:.0f} s and continues on fal; nothing is lost. Call check_status "
            f"with job_id '{record.job_id}' (wait_seconds up to {settings.wait_seconds:g}) to get the images."
        )
    return f"The job {where}. Call check_status with job_id '{record.job_id}' to follow it."
