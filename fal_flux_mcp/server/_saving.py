"""Getting a finished job's images onto the user's disk, and trying again until they are there.

An image fal made is paid for. A download that fails (fal's CDN answers 502 once, the connection drops)
or a save that fails (disk full, output folder unwritable) must not leave it unsaved for good: the
image is marked ``pending`` in the job's result, with why and where it will go, and ``retry`` is called
again (by the job service after a backoff, by ``check_status``, at the next server start) until the
file exists or fal's URL is gone. Meanwhile the result still shows the preview, when the bytes were
downloaded at all.

Each image streams from fal's CDN into its hidden file in the output folder; the preview is decoded
from that file while the file is synced and published under its final name. When the output folder
cannot be written, the download goes to an anonymous temporary file instead, so the preview is
still made. Image work runs in at most one worker thread per core: more only add memory.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import anyio

from fal_flux_mcp.fal import FalError
from fal_flux_mcp.models import FluxOutput
from fal_flux_mcp.server._errors import reason_of
from fal_flux_mcp.server._files import ImageName, output_folder, partial_file, publish
from fal_flux_mcp.server._images import Preview, image_dimensions, make_preview, preview_budget
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
        self._image_work = anyio.CapacityLimiter(os.cpu_count() or 2)
        # Syncing and linking files waits on the disk, not the CPU: a few more, still bounded.
        self._file_work = anyio.CapacityLimiter(4)
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
        name = ImageName(record.prompt, record.endpoint_id, seed, info.index, record.created_at)
        with _Landing.open(self.settings.output_dir, name, record.job_id) as landing:
            return await self._download_and_keep(record, info, landing, budget, source)

    async def _download_and_keep(
        self, record: JobRecord, info: ImageInfo, landing: _Landing, budget: int, source: str
    ) -> ImageInfo:
        file = landing.file
        try:
            await self._fal().download_to(source, file)
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
        file.flush()
        file.seek(0)
        try:
            width, height, content_type = (
                (info.width, info.height, info.content_type)
                if info.width is not None and info.height is not None
                else image_dimensions(file)
            )
        except ValueError as exc:
            return info.model_copy(update={"save_state": "gone", "save_error": f"not an image: {exc}"})
        info = info.model_copy(update={"width": width, "height": height, "content_type": content_type})
        saved = info

        async def keep_file() -> None:
            nonlocal saved
            saved = await self._publish(record, info, landing, content_type)

        async with anyio.create_task_group() as group:
            group.start_soon(keep_file)
            file.seek(0)
            await self._preview(record.job_id, info.index, file, budget)
        return saved

    async def _publish(
        self, record: JobRecord, info: ImageInfo, landing: _Landing, content_type: str
    ) -> ImageInfo:
        """Give the downloaded file its final name: ``saved``, or ``pending`` with why it could not be."""
        try:
            if landing.partial is None:
                raise landing.problem or OSError("the output folder cannot be written")
            publish_it = functools.partial(
                publish, landing.partial, landing.partial.parent, landing.name, content_type, record.job_id
            )
            path = await anyio.to_thread.run_sync(publish_it, limiter=self._file_work)
        except (OSError, ValueError) as exc:
            logger.warning("could not save image %d of %s: %s", info.index, record.job_id, exc)
            return info.model_copy(
                update={"save_state": "pending", "save_error": f"saving failed: {reason_of(exc)}"}
            )
        return info.model_copy(update={"path": str(path), "save_state": "saved", "save_error": None})

    async def _preview(self, job_id: str, index: int, file: BinaryIO, budget: int) -> None:
        """Make the preview and keep it: on disk in the state folder, else in memory for this process."""
        path = self.preview_path(job_id, index)
        if await anyio.Path(path).is_file():
            return
        make = functools.partial(_make_and_write_preview, file, path, self.settings.preview_max_edge, budget)
        try:
            unwritten = await anyio.to_thread.run_sync(make, limiter=self._image_work)
        except ValueError as exc:
            logger.warning("no preview for image %d of %s: %s", index, job_id, exc)
            return
        if unwritten is not None:
            self._unwritten[(job_id, index)] = unwritten
        else:
            self._unwritten.pop((job_id, index), None)

    @property
    def previews_dir(self) -> Path:
        """The folder previews are kept in (pruned with the journal, see ``_retention``)."""
        return self.settings.state_dir / "previews"

    def preview_path(self, job_id: str, index: int) -> Path:
        """Where the preview of one image is kept."""
        safe = "".join(c for c in job_id if c.isalnum() or c in "-_")
        return self.previews_dir / f"{safe}-{index}.jpg"

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


@dataclass(slots=True)
class _Landing:
    """Where one image's bytes land as they download: its hidden file in the output folder, or, when
    that folder cannot be written, an anonymous temporary file (``partial`` None, ``problem`` why)."""

    file: BinaryIO
    name: ImageName
    partial: Path | None = None
    problem: Exception | None = None

    @classmethod
    def open(cls, output_dir: Path, name: ImageName, job_id: str) -> _Landing:
        # Blocking, but only a mkdir and an open: cheaper than a hop to a worker thread.
        try:
            partial = partial_file(output_folder(output_dir), name, job_id)
            return cls(open(partial, "w+b"), name, partial)
        except (OSError, ValueError) as exc:
            return cls(tempfile.TemporaryFile(), name, problem=exc)

    def __enter__(self) -> _Landing:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.file.close()
        if self.partial is not None:
            self.partial.unlink(missing_ok=True)


def _make_and_write_preview(file: BinaryIO, path: Path, max_edge: int, budget: int) -> Preview | None:
    """Make the preview of ``file`` and write it to ``path``; the preview if it could not be written.

    One worker-thread task, so that writing the small file does not cost a second hop off the loop.
    """
    preview = make_preview(file, max_edge=max_edge, max_bytes=budget)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(preview.data)
    except OSError as exc:
        logger.warning("could not write the preview %s: %s", path.name, exc)
        return preview
    return None
