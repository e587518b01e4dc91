"""Getting a finished job's images onto the user's disk, and trying again until they are there.

An image fal made is paid for. A download that fails (fal's CDN answers 502 once, the connection drops)
or a save that fails (disk full, output folder unwritable) must not leave it unsaved for good: the
image is marked ``pending`` in the job's result, with why and where it will go, and ``retry`` is called
again (by the job service after a backoff, by ``check_status``, at the next server start) until the
file exists or fal's URL is gone. Meanwhile the result still shows the preview, made from the bytes
in memory, when the bytes were downloaded at all.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from fal_flux_mcp.fal import FalError
from fal_flux_mcp.models import FluxOutput
from fal_flux_mcp.server._errors import reason_of
from fal_flux_mcp.server._images import (
    Preview,
    image_dimensions,
    make_preview_async,
    preview_budget,
    save_image,
)
from fal_flux_mcp.server._journal import JobRecord
from fal_flux_mcp.server._schemas import ImageInfo, image_uri
from fal_flux_mcp.settings import Settings

if TYPE_CHECKING:
    from fal_flux_mcp.fal import FalClient

logger = logging.getLogger("fal_flux_mcp.server")

#: fal answers these for a file URL that no longer exists: retrying cannot bring the image back.
_GONE_STATUSES = frozenset({403, 404, 410})


class ImageSaver:
    """Downloads, saves and previews a job's images; the one place that writes them to disk."""

    def __init__(self, settings: Settings, fal: Callable[[], FalClient]) -> None:
        self.settings = settings
        self._fal = fal
        # Previews decode megapixels; more at once than there are cores only adds memory and contention.
        self._image_work = anyio.CapacityLimiter(max(2, os.cpu_count() or 2))
        # Previews that could not be written to the state folder, served from memory until they can.
        self._unwritten: dict[tuple[str, int], Preview] = {}

    async def save_all(self, record: JobRecord, output: FluxOutput) -> list[ImageInfo]:
        """Save every image of a completed job concurrently; an image that fails is ``pending``."""
        budget = preview_budget(max(1, len(output.images)))
        infos: list[ImageInfo | None] = [None] * len(output.images)

        async def save_one(index: int) -> None:
            image = output.images[index]
            info = ImageInfo(
                index=index,
                url=image.url if not image.url.startswith("data:") else f"data:{image.content_type};base64,…",
                path=None,
                resource_uri=image_uri(record.job_id, index),
                width=image.width,
                height=image.height,
                content_type=image.content_type,
                nsfw=index < len(output.has_nsfw_concepts) and output.has_nsfw_concepts[index],
                save_state="pending",
            )
            infos[index] = await self._save(record, info, output.seed, budget, source=image.url)

        async with anyio.create_task_group() as group:
            for index in range(len(output.images)):
                group.start_soon(save_one, index)
        return [info for info in infos if info is not None]

    async def retry(self, record: JobRecord, images: list[ImageInfo]) -> list[ImageInfo]:
        """Try again to save each ``pending`` image of ``images``; the others are returned as they are."""
        seed = (record.result or {}).get("seed")
        budget = preview_budget(max(1, len(images)))
        retried: list[ImageInfo] = []
        for info in images:
            if info.save_state == "pending":
                info = await self._save(record, info, seed if isinstance(seed, int) else None, budget)
            retried.append(info)
        return retried

    async def _save(
        self, record: JobRecord, info: ImageInfo, seed: int | None, budget: int, *, source: str | None = None
    ) -> ImageInfo:
        """One image: download, save, preview. Never raises for a passing failure: it says why instead."""
        source = source or info.url
        if source.startswith("data:") and source.endswith("…"):
            return info.model_copy(
                update={"save_state": "gone", "save_error": "the image came inline and was not kept"}
            )
        try:
            data = await self._fal().download(source)
        except FalError as exc:
            gone = exc.status_code in _GONE_STATUSES
            logger.warning("could not download image %d of %s: %s", info.index, record.job_id, exc)
            return info.model_copy(
                update={
                    "save_state": "gone" if gone else "pending",
                    "save_error": f"fal's URL is gone ({exc.message})"
                    if gone
                    else f"download failed: {exc.message}",
                }
            )
        try:
            width, height, content_type = (
                (info.width, info.height, info.content_type)
                if info.width is not None and info.height is not None
                else image_dimensions(data)
            )
        except ValueError as exc:
            return info.model_copy(update={"save_state": "gone", "save_error": f"not an image: {exc}"})
        info = info.model_copy(update={"width": width, "height": height, "content_type": content_type})
        await self._preview(record.job_id, info.index, data, budget)
        try:
            path = await anyio.to_thread.run_sync(
                functools.partial(
                    save_image,
                    data,
                    output_dir=self.settings.output_dir,
                    job_id=record.job_id,
                    index=info.index,
                    prompt=record.prompt,
                    endpoint_id=record.endpoint_id,
                    seed=seed,
                    content_type=content_type,
                    created_at=record.created_at,
                )
            )
        except (OSError, ValueError) as exc:
            logger.warning("could not save image %d of %s: %s", info.index, record.job_id, exc)
            return info.model_copy(
                update={"save_state": "pending", "save_error": f"saving failed: {reason_of(exc)}"}
            )
        return info.model_copy(update={"path": str(path), "save_state": "saved", "save_error": None})

    async def _preview(self, job_id: str, index: int, data: bytes, budget: int) -> None:
        """Make the preview and keep it: on disk in the state folder, else in memory for this process."""
        if await anyio.Path(self.preview_path(job_id, index)).is_file():
            return
        try:
            preview = await make_preview_async(
                data, max_edge=self.settings.preview_max_edge, max_bytes=budget, limiter=self._image_work
            )
        except ValueError as exc:
            logger.warning("no preview for image %d of %s: %s", index, job_id, exc)
            return
        path = anyio.Path(self.preview_path(job_id, index))
        try:
            await path.parent.mkdir(parents=True, exist_ok=True)
            await path.write_bytes(preview.data)
        except OSError as exc:
            logger.warning("could not write the preview of image %d of %s: %s", index, job_id, exc)
            self._unwritten[(job_id, index)] = preview
            return
        self._unwritten.pop((job_id, index), None)

    def preview_path(self, job_id: str, index: int) -> Path:
        """Where the preview of one image is kept."""
        safe = "".join(c for c in job_id if c.isalnum() or c in "-_")
        return self.settings.state_dir / "previews" / f"{safe}-{index}.jpg"

    async def previews(self, job_id: str, images: list[ImageInfo]) -> list[Preview]:
        """The previews of ``images`` (an image whose preview is missing is skipped)."""
        found: list[Preview] = []
        for image in images:
            kept = self._unwritten.get((job_id, image.index))
            if kept is not None:
                found.append(kept)
                continue
            try:
                data = await anyio.Path(self.preview_path(job_id, image.index)).read_bytes()
            except OSError:
                continue
            width, height, mime_type = image_dimensions(data)
            found.append(Preview(data=data, width=width, height=height, mime_type=mime_type))
        return found
