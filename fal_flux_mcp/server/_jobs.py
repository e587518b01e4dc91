"""The life of a generation job, from tool arguments to saved files, independent of any transport.

``JobService`` turns the tools' parameters into a validated fal input (uploading a local input image
first), submits it and writes it to the journal before anything else can fail, follows it, and once it
completes downloads the images concurrently, saves them and makes previews, exactly once per job. The
MCP tools are thin on top of it; it knows the fal client's API but not HTTP, and not MCP.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
from anyio.abc import TaskGroup

from fal_flux_mcp.fal import (
    ContentPolicyError,
    FalError,
    FalTimeoutError,
    JobFailedError,
    QueueHandle,
    QueueStatus,
    ValidationError,
    validate_input,
)
from fal_flux_mcp.models import FalInput, FluxOutput, image_size_for_aspect_ratio
from fal_flux_mcp.registry import MODELS, ModelInfo
from fal_flux_mcp.server._images import (
    Preview,
    image_dimensions,
    make_preview_async,
    preview_budget,
    save_image,
)
from fal_flux_mcp.server._journal import JobRecord, Journal
from fal_flux_mcp.server._schemas import GenerationParams, ImageInfo, JobResult, JobState
from fal_flux_mcp.server._uploads import UploadRefused, decode_image_data, resolve_local_image
from fal_flux_mcp.settings import Settings

if TYPE_CHECKING:
    from fal_flux_mcp.fal import FalClient

logger = logging.getLogger("fal_flux_mcp.server")

StatusCallback = Callable[[QueueStatus], Awaitable[None]]
#: The folders local input images may come from; asked for only when an input is a local path (asking
#: may mean a round trip to the MCP client for its roots).
AllowedDirs = Callable[[], Awaitable[Sequence[Path]]]
#: How long a background follower keeps watching a job the client stopped waiting for.
_FOLLOW_SECONDS = 6 * 3600
#: Data URIs larger than this are uploaded rather than sent inline in the request body.
_INLINE_DATA_URI_BYTES = 256 * 1024


async def _no_dirs() -> Sequence[Path]:
    return ()


class JobError(Exception):
    """A request about a job that cannot be carried out; the message says what to change."""


class UnknownJobError(JobError):
    """No job with that id is in the journal."""


def tool_fields_for(model: ModelInfo) -> list[str]:
    """The generation arguments a model takes, by the tools' names (aspect_ratio works for every model)."""
    taken = set(model.parameters) | {"model", "aspect_ratio"}
    return [name for name in GenerationParams.model_fields if name in taken]


def job_uri(job_id: str) -> str:
    """The MCP resource of a job."""
    return f"flux://jobs/{job_id}"


def image_uri(job_id: str, index: int) -> str:
    """The MCP resource of one of a job's images."""
    return f"flux://images/{job_id}/{index}"


def image_name(job_id: str, index: int, path: str | None) -> str:
    """What a client shows for an image resource: the saved file's name, else the job and index."""
    return Path(path).name if path else f"{job_id}-{index}"


@dataclass(frozen=True, slots=True)
class JobView:
    """A job as the tools show it: the structured result, and previews once it completed."""

    result: JobResult
    previews: list[Preview]


class JobService:
    """Submits, follows, finishes and cancels jobs; every job it submits is in the journal first."""

    def __init__(self, settings: Settings, journal: Journal, fal: FalClient | None = None) -> None:
        self.settings = settings
        self.journal = journal
        self._fal = fal
        self._locks: dict[str, anyio.Lock] = {}
        # Previews decode megapixels; more at once than there are cores only adds memory and contention.
        self._image_work = anyio.CapacityLimiter(max(2, os.cpu_count() or 2))
        self._following: set[str] = set()
        self.task_group: TaskGroup | None = None
        self.on_finished: Callable[[JobRecord], Awaitable[None]] | None = None

    @property
    def fal(self) -> FalClient:
        """The fal client, made on first use so that the server starts without loading the HTTP stack."""
        if self._fal is None:
            from fal_flux_mcp.fal import FalClient

            self._fal = FalClient.from_settings(self.settings)
        return self._fal

    async def aclose(self) -> None:
        """Close the fal client if one was made."""
        if self._fal is not None:
            await self._fal.aclose()

    # ------------------------------------------------------------------------------------ the input

    def build_input(self, params: GenerationParams) -> tuple[ModelInfo, dict[str, Any]]:
        """The fal arguments for ``params``; a ``JobError`` naming the fields if the model does not take one.

        ``image_url`` is left as given: it may still be a local path to upload (``prepare``).
        """
        model = MODELS[params.model]
        accepted = model.parameters
        fields = params.model_dump(exclude_none=True, exclude={"model", "webhook_url"})
        if "aspect_ratio" in fields and "aspect_ratio" not in accepted and "image_size" in accepted:
            if "image_size" in fields:
                raise JobError(
                    f"Give either aspect_ratio or image_size, not both: {model.endpoint_id} is sized by "
                    "image_size, and aspect_ratio is turned into one."
                )
            size = image_size_for_aspect_ratio(fields.pop("aspect_ratio"))
            fields["image_size"] = size if isinstance(size, str) else size.model_dump()
        unsupported = [name for name in fields if name not in accepted]
        if unsupported:
            hint = " Use aspect_ratio to shape the image." if "image_size" in unsupported else ""
            raise JobError(
                f"{model.endpoint_id} does not take {', '.join(unsupported)}. It takes: "
                f"{', '.join(tool_fields_for(model))}.{hint} Remove the field or pick another model (list_models)."
            )
        if model.requires_image and "image_url" not in fields:
            raise JobError(
                f"{model.endpoint_id} ({model.title}) works on an input image: pass image_url, an https URL "
                "or a local file path inside the allowed directories."
            )
        if model.task == "text-to-image" and not params.prompt.strip():
            raise JobError(f"{model.endpoint_id} needs a prompt describing the image.")
        return model, fields

    async def prepare(
        self, params: GenerationParams, allowed_dirs: AllowedDirs
    ) -> tuple[ModelInfo, FalInput]:
        """Validate everything and upload a local ``image_url``: after this, submitting cannot be refused."""
        model, fields = self.build_input(params)
        given_url = fields.get("image_url")
        # Check every other field before uploading anything: a bad value must cost neither money nor time.
        self._validate(
            model, fields | {"image_url": "https://example.invalid/input.png"} if given_url else fields
        )
        if given_url:
            fields["image_url"] = await self.resolve_image_url(given_url, allowed_dirs)
        return model, self._validate(model, fields)

    @staticmethod
    def _validate(model: ModelInfo, fields: dict[str, Any]) -> FalInput:
        try:
            return validate_input(model.endpoint_id, fields)
        except ValidationError as exc:
            raise JobError(f"{exc.message}. Fix the value and call again.") from None

    async def resolve_image_url(self, value: str, allowed_dirs: AllowedDirs) -> str:
        """An URL fal can fetch: http(s) as is, a large data URI or a local file uploaded to fal first."""
        scheme = urlsplit(value).scheme.lower()
        if scheme in ("http", "https"):
            return value
        if scheme == "data":
            if len(value) <= _INLINE_DATA_URI_BYTES:
                return value
            try:
                decoded = decode_image_data(value, None, self.settings.upload_max_bytes)
            except UploadRefused as exc:
                raise JobError(f"image_url: {exc}") from None
            return await self.fal.upload_bytes(
                decoded.data, content_type=decoded.content_type, file_name=decoded.file_name
            )
        try:
            local = await anyio.to_thread.run_sync(
                functools.partial(
                    resolve_local_image, value, await allowed_dirs(), self.settings.upload_max_bytes
                )
            )
        except UploadRefused as exc:
            raise JobError(f"image_url: {exc}") from None
        return await self.fal.upload_file(
            local.path, content_type=local.content_type, file_name=local.file_name
        )

    # ------------------------------------------------------------------------------- submit, follow

    async def submit(
        self,
        params: GenerationParams,
        *,
        allowed_dirs: AllowedDirs = _no_dirs,
        webhook_url: str | None = None,
    ) -> JobRecord:
        """Submit to fal and journal the job before returning: from here on the job is never lost."""
        model, fal_input = await self.prepare(params, allowed_dirs)
        handle = await self.fal.submit(model.endpoint_id, fal_input, webhook_url=webhook_url)
        record = JobRecord(
            job_id=handle.request_id,
            endpoint_id=handle.endpoint_id,
            status_url=handle.status_url,
            response_url=handle.response_url,
            cancel_url=handle.cancel_url,
            arguments=_journal_arguments(fal_input),
            prompt=params.prompt,
            status="queued",
            queue_position=handle.queue_position,
            cost_usd=model.estimate_cost(fal_input),
            webhook_url=webhook_url,
        )
        try:
            self.journal.add(record)
        except Exception as exc:
            logger.exception("could not journal job %s", record.job_id)
            raise JobError(
                f"fal accepted the job (job_id {record.job_id}) but it could not be recorded locally "
                f"({type(exc).__name__}); keep the job_id: check_status still needs it."
            ) from None
        return record

    def get(self, job_id: str) -> JobRecord:
        """The journalled job, or an ``UnknownJobError`` that shows what ids look like."""
        record = self.journal.get(job_id.strip())
        if record is None:
            recent = ", ".join(r.job_id for r in self.journal.recent(3)) or "none yet"
            raise UnknownJobError(
                f"No job {job_id!r} was submitted through this fal-flux-mcp (recent job ids: {recent}). Use the "
                "job_id that generate_image or submit_job returned."
            )
        return record

    @staticmethod
    def handle(record: JobRecord) -> QueueHandle:
        return QueueHandle(
            endpoint_id=record.endpoint_id,
            request_id=record.job_id,
            status_url=record.status_url,
            response_url=record.response_url,
            cancel_url=record.cancel_url,
            queue_position=record.queue_position,
        )

    async def follow(
        self,
        record: JobRecord,
        *,
        seconds: float,
        logs: bool = False,
        on_status: StatusCallback | None = None,
    ) -> tuple[JobRecord, list[str]]:
        """Follow a job for at most ``seconds``; finish it if it completes. Returns it and its log lines."""
        if record.is_terminal:
            return record, []
        log_lines: list[str] = []
        completed = False
        with anyio.move_on_after(seconds):
            async with aclosing(self.fal.stream_status(self.handle(record), logs=logs)) as updates:
                async for status in updates:
                    record = self._note(record, status)
                    if status.logs:
                        log_lines = [entry.message for entry in status.logs]
                    if on_status is not None:
                        await on_status(status)
                    if status.done:
                        completed = True
                        break
        if completed:
            record = await self.finish(record.job_id)
        return record, log_lines

    def _note(self, record: JobRecord, status: QueueStatus) -> JobRecord:
        state: JobState = "queued" if status.status == "IN_QUEUE" else "in_progress"
        if status.status == "COMPLETED" or (
            record.status == state and record.queue_position == status.queue_position
        ):
            return record
        return self.journal.update(record.job_id, status=state, queue_position=status.queue_position)

    async def poll(self, record: JobRecord, *, logs: bool = False) -> tuple[JobRecord, list[str]]:
        """Ask fal once where the job is (and finish it if it is done)."""
        if record.is_terminal:
            return record, []
        status = await self.fal.status(self.handle(record), logs=logs)
        lines = [entry.message for entry in status.logs or []]
        if status.done:
            return await self.finish(record.job_id), lines
        return self._note(record, status), lines

    def follow_in_background(self, record: JobRecord) -> None:
        """Keep following a job nobody waits for, so its files are saved when it completes."""
        if self.task_group is None or record.is_terminal or record.job_id in self._following:
            return
        self._following.add(record.job_id)
        self.task_group.start_soon(self._follow_quietly, record, name=f"follow {record.job_id}")

    async def _follow_quietly(self, record: JobRecord) -> None:
        try:
            await self.follow(record, seconds=_FOLLOW_SECONDS)
        except FalError as exc:
            logger.info("stopped following %s: %s", record.job_id, exc)
        except Exception:  # it runs in the server's task group: a failure here must not stop the server
            logger.exception("stopped following %s", record.job_id)
        finally:
            self._following.discard(record.job_id)

    # ------------------------------------------------------------------------------------ finishing

    async def finish(self, job_id: str) -> JobRecord:
        """Fetch the result of a COMPLETED job, save its images and journal the result, once per job."""
        lock = self._locks.setdefault(job_id, anyio.Lock())
        async with lock:
            record = self.get(job_id)
            if record.is_terminal:
                return record
            try:
                output = await self.fal.result(self.handle(record))
            except (ContentPolicyError, ValidationError, JobFailedError, FalTimeoutError) as exc:
                if isinstance(exc, FalTimeoutError) and exc.status_code is None:
                    raise  # fal was slow to answer: the job is fine, ask again later
                cancelled = exc.error_type in ("client_cancelled", "client_disconnected")
                record = self.journal.update(
                    job_id,
                    status="cancelled" if cancelled else "failed",
                    error=exc.message,
                    queue_position=None,
                )
                await self._finished(record)
                return record
            if output is None:
                return record
            images = await self._save_all(record, output)
            finished = record.model_copy(update={"completed_at": datetime.now(UTC)})
            result = self._result(finished, "completed", images, output=output)
            record = self.journal.update(
                job_id,
                status="completed",
                result=result.model_dump(mode="json"),
                queue_position=None,
                completed_at=finished.completed_at,
            )
            await self._finished(record)
            return record

    async def _finished(self, record: JobRecord) -> None:
        self._locks.pop(record.job_id, None)
        if self.on_finished is not None:
            try:
                await self.on_finished(record)
            except Exception:  # a notification must never turn a finished job into an error
                logger.exception("on_finished failed for %s", record.job_id)

    async def _save_all(self, record: JobRecord, output: FluxOutput) -> list[ImageInfo]:
        budget = preview_budget(max(1, len(output.images)))
        infos: list[ImageInfo | None] = [None] * len(output.images)

        async def save_one(index: int) -> None:
            infos[index] = await self._save_one(record, output, index, budget)

        async with anyio.create_task_group() as group:
            for index in range(len(output.images)):
                group.start_soon(save_one, index)
        return [info for info in infos if info is not None]

    async def _save_one(self, record: JobRecord, output: FluxOutput, index: int, budget: int) -> ImageInfo:
        image = output.images[index]
        nsfw = index < len(output.has_nsfw_concepts) and output.has_nsfw_concepts[index]
        path: Path | None = None
        width, height, content_type = image.width, image.height, image.content_type
        try:
            data = await self.fal.download(image.url)
            if width is None or height is None:
                width, height, content_type = image_dimensions(data)
            path = await anyio.to_thread.run_sync(
                functools.partial(
                    save_image,
                    data,
                    output_dir=self.settings.output_dir,
                    job_id=record.job_id,
                    index=index,
                    prompt=record.prompt,
                    endpoint_id=record.endpoint_id,
                    seed=output.seed,
                    content_type=content_type,
                    created_at=record.created_at,
                )
            )
            preview = await make_preview_async(
                data, max_edge=self.settings.preview_max_edge, max_bytes=budget, limiter=self._image_work
            )
            await anyio.Path(self._preview_path(record.job_id, index)).parent.mkdir(
                parents=True, exist_ok=True
            )
            await anyio.Path(self._preview_path(record.job_id, index)).write_bytes(preview.data)
        except (FalError, OSError, ValueError) as exc:
            # The job is paid and its URL is good for days: report the image without a local copy.
            logger.warning("could not save image %d of %s: %s", index, record.job_id, exc)
        return ImageInfo(
            index=index,
            url=image.url if not image.url.startswith("data:") else f"data:{content_type};base64,…",
            path=str(path) if path else None,
            resource_uri=image_uri(record.job_id, index),
            width=width,
            height=height,
            content_type=content_type,
            nsfw=nsfw,
        )

    def _preview_path(self, job_id: str, index: int) -> Path:
        safe = "".join(c for c in job_id if c.isalnum() or c in "-_")
        return self.settings.state_dir / "previews" / f"{safe}-{index}.jpg"

    async def previews(self, record: JobRecord) -> list[Preview]:
        """The previews made when the job finished (an image whose preview is missing is skipped)."""
        result = record.result or {}
        found: list[Preview] = []
        for image in result.get("images", []) or []:
            if not isinstance(image, dict):
                continue
            path = anyio.Path(self._preview_path(record.job_id, int(image.get("index", 0))))
            try:
                data = await path.read_bytes()
            except OSError:
                continue
            width, height, mime_type = image_dimensions(data)
            found.append(Preview(data=data, width=width, height=height, mime_type=mime_type))
        return found

    # ------------------------------------------------------------------------------------ cancelling

    async def cancel(self, job_id: str) -> tuple[JobRecord, bool, str]:
        """Cancel on fal. Returns the job, whether the cancel was accepted, and what happened.

        The job is journalled as cancelled only when fal says so: a running job that fal could not
        stop still completes, is paid for, and its images are saved like any other's.
        """
        record = self.get(job_id)
        if record.is_terminal:
            return record, False, f"The job had already finished ({record.status}); nothing to cancel."
        answer = await self.fal.cancel(self.handle(record))
        if not answer.accepted:
            record = await self.finish(job_id)
            return record, False, f"The job had already finished ({record.status}); fal did not cancel it."
        record, _ = await self.poll(record)
        if record.status == "cancelled":
            return record, True, "Cancelled. A queued job is never run or charged."
        if record.is_terminal:
            return record, False, f"The job finished ({record.status}) before the cancel reached it."
        self.follow_in_background(record)
        return (
            record,
            True,
            "Cancellation requested: fal stops a running job if it still can. If it finishes anyway, its "
            "images are saved; check_status shows the outcome.",
        )

    # ------------------------------------------------------------------------------------- describing

    def describe(
        self, record: JobRecord, *, logs: list[str] | None = None, waited: float | None = None
    ) -> JobResult:
        """The structured view of a job in any state; a completed job's stored result is served as built."""
        if record.status == "completed" and record.result:
            result = JobResult.model_validate(record.result)
            return result.model_copy(update={"logs": logs}) if logs else result
        return self._result(record, record.status, [], logs=logs, waited=waited)

    def _result(
        self,
        record: JobRecord,
        status: JobState,
        images: list[ImageInfo],
        *,
        output: FluxOutput | None = None,
        logs: list[str] | None = None,
        waited: float | None = None,
    ) -> JobResult:
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
            message=_message(record, status, images, waited),
            error=record.error,
            logs=logs or None,
            created_at=record.created_at,
            completed_at=record.completed_at,
        )


def _journal_arguments(fal_input: FalInput) -> dict[str, Any]:
    """The input as sent, with an inline data URI shortened: the journal keeps facts, not image bytes."""
    arguments = fal_input.model_dump(mode="json", exclude_none=True)
    image_url = arguments.get("image_url")
    if isinstance(image_url, str) and image_url.startswith("data:"):
        arguments["image_url"] = f"{image_url.split(',', 1)[0]},<{len(image_url)} characters>"
    return arguments


def _message(record: JobRecord, status: JobState, images: list[ImageInfo], waited: float | None) -> str:
    if status == "completed":
        saved = [i.path for i in images if i.path]
        flagged = sum(1 for i in images if i.nsfw)
        text = f"Generated {len(images)} image(s)"
        text += (
            f", saved to {', '.join(saved)}." if saved else "; they could not be saved locally, use the URLs."
        )
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
            f"with job_id '{record.job_id}' (wait_seconds up to 45) to get the images."
        )
    return f"The job {where}. Call check_status with job_id '{record.job_id}' to follow it."
