"""Recent jobs at a glance: what ``open_gallery`` returns, and what the web gallery's grid lists.

The gallery app gets a thumbnail per image in the result's ``_meta`` (data the page draws, which hosts
keep out of the model's context), because a host's CSP may not let fal's CDN load at all.
"""

from __future__ import annotations

import base64
from datetime import datetime

import anyio
from pydantic import BaseModel, ConfigDict, Field

from fal_flux_mcp.server._images import make_preview_async
from fal_flux_mcp.server._jobs import JobService
from fal_flux_mcp.server._schemas import JobResult, SpendReport

#: The longest side of a gallery thumbnail, and its most bytes: 60 of them stay far below 1 MB.
THUMB_EDGE = 192
THUMB_BYTES = 9_000
#: The most thumbnail text one result carries; images past it are drawn from fal's URL alone.
THUMBS_BUDGET = 600_000
#: ``_meta`` key of the thumbnails, ``{"<job_id>/<index>": "data:image/jpeg;base64,…"}``.
THUMBNAILS_KEY = "fal-flux-mcp/thumbnails"


class GalleryParams(BaseModel):
    """``open_gallery``'s input."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=30, ge=1, le=60, description="How many recent jobs to show (1-60).")


class GalleryImage(BaseModel):
    """One image of a job in the gallery."""

    index: int = Field(description="Position of the image in the job, from 0.")
    url: str = Field(description="The image on fal's CDN.")
    width: int | None = Field(description="Width in pixels.")
    height: int | None = Field(description="Height in pixels.")
    content_type: str = Field(description="MIME type.")
    file_name: str | None = Field(description="Name of the saved file, if saved.")


class GalleryJob(BaseModel):
    """A completed job as the gallery lists it."""

    job_id: str
    model: str
    prompt: str
    seed: int | None
    cost_usd: float | None
    completed_at: datetime | None
    images: list[GalleryImage]


class Gallery(BaseModel):
    """``open_gallery``'s output: recent completed jobs, newest first, and the spend report."""

    jobs: list[GalleryJob] = Field(description="Recent completed jobs with images, newest first.")
    spend: SpendReport = Field(description="What was spent, as get_spend reports it.")


def recent(jobs: JobService, limit: int, owner: str) -> list[JobResult]:
    """``owner``'s most recent completed jobs with images, newest first, each with its cost."""
    ids = jobs.journal.recently_completed(limit, owner)
    return [job for job_id in ids if (job := described(jobs, job_id, owner)) is not None and job.images]


def described(jobs: JobService, job_id: str, owner: str) -> JobResult | None:
    """``owner``'s job as the tools describe it, with its cost; None if they have no such job."""
    record = jobs.journal.get(job_id, owner)
    if record is None:
        return None
    return jobs.describe(record).model_copy(
        update={"cost_usd": record.cost_usd, "price_source": record.price_source}
    )


def gallery(jobs: JobService, shown: list[JobResult], owner: str) -> Gallery:
    """``shown`` (from ``recent``) as the gallery lists them, and ``owner``'s spend report."""
    listed = [
        GalleryJob(
            job_id=job.job_id,
            model=job.model,
            prompt=job.prompt,
            seed=job.seed,
            cost_usd=job.cost_usd,
            completed_at=job.completed_at,
            images=[
                GalleryImage(
                    index=image.index,
                    url=image.url,
                    width=image.width,
                    height=image.height,
                    content_type=image.content_type,
                    file_name=image.path.replace("\\", "/").rsplit("/", 1)[-1] if image.path else None,
                )
                for image in job.images
            ],
        )
        for job in shown
    ]
    return Gallery(jobs=listed, spend=jobs.ledger.report(owner))


async def thumbnails(jobs: JobService, shown: list[JobResult]) -> dict[str, str]:
    """A small JPEG data URI per image, made from the previews kept for each job (missing ones left out)."""
    found: dict[str, str] = {}
    limiter = anyio.CapacityLimiter(2)
    spent = 0
    for job in shown:
        for image in job.images:
            if spent > THUMBS_BUDGET - 4 * THUMB_BYTES // 3:
                return found
            previews = await jobs.saver.previews(job.job_id, [image])
            if not previews:
                continue
            try:
                thumb = await make_preview_async(
                    previews[0].data, max_edge=THUMB_EDGE, max_bytes=THUMB_BYTES, limiter=limiter
                )
            except ValueError:
                continue
            data = base64.b64encode(thumb.data).decode("ascii")
            found[f"{job.job_id}/{image.index}"] = f"data:image/jpeg;base64,{data}"
            spent += len(data)
    return found
