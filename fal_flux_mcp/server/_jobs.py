"""The life of a generation job, from tool arguments to saved files, independent of any transport.

``JobService`` has the input checked and prepared (``_inputs``), submits it and writes it to the
journal before anything else can fail, follows it, and once it completes has the images saved
(``_saving``), exactly once per job; it cancels on request, and says what it did. The MCP tools are
thin on top of it; it knows the fal client's API but not HTTP, and not MCP.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import anyio

from fal_flux_mcp.fal import (
    ContentPolicyError,
    FalError,
    FalTimeoutError,
    JobFailedError,
    QueueHandle,
    QueueStatus,
    RateLimitedError,
    UpstreamUnavailableError,
    ValidationError,
)
from fal_flux_mcp.registry import MODELS
from fal_flux_mcp.server._background import Background
from fal_flux_mcp.server._cancel import stop_waiting
from fal_flux_mcp.server._following import Follower
from fal_flux_mcp.server._images import Preview
from fal_flux_mcp.server._inputs import InputBuilder
from fal_flux_mcp.server._journal import JobRecord, Journal, SubmitIntent
from fal_flux_mcp.server._ledger import Ledger
from fal_flux_mcp.server._lookup import image_of, unknown_job
from fal_flux_mcp.server._prices import PriceBook
from fal_flux_mcp.server._reconcile import Reconciler
from fal_flux_mcp.server._results import describe, has_pending_saves, job_result, message
from fal_flux_mcp.server._saving import ImageSaver
from fal_flux_mcp.server._schemas import ImageInfo, JobResult, JobState
from fal_flux_mcp.server._user_keys import UserKeys
from fal_flux_mcp.settings import Settings

if TYPE_CHECKING:
    from fal_flux_mcp.fal import FalClient

logger = logging.getLogger("fal_flux_mcp.server")

StatusCallback = Callable[[QueueStatus], Awaitable[None]]
#: The first and the longest wait before fal's request history is read again for a leftover submission.
_RECONCILE_RETRY_FIRST = 2.0
_RECONCILE_RETRY_MAX = 60.0


class JobService:
    """Submits, follows, finishes and cancels jobs; every job it submits is in the journal first."""

    def __init__(self, settings: Settings, journal: Journal, fal: FalClient | None = None) -> None:
        self.settings = settings
        self.journal = journal
        self._fal = fal
        self._locks: dict[str, anyio.Lock] = {}
        self.user_keys = UserKeys(settings, journal, lambda: self.fal) if settings.user_keys else None
        self.inputs = InputBuilder(settings, self.fal_for, functools.partial(image_of, self))
        self.prices = PriceBook(lambda: self.fal)
        self.ledger = Ledger(journal, settings)
        self.saver = ImageSaver(settings, lambda: self.fal)
        self.background = Background()
        self.reconciler = Reconciler(
            journal,
            self.fal_for,
            window=timedelta(seconds=settings.reconcile_window_seconds),
        )
        self.on_finished: Callable[[JobRecord], Awaitable[None]] | None = None
        #: Which jobs this replica follows (leases), and taking over those no replica follows.
        self.follower = Follower(self)

    @property
    def fal(self) -> FalClient:
        """The fal client, made on first use so that the server starts without loading the HTTP stack."""
        if self._fal is None:
            from fal_flux_mcp.fal import FalClient

            self._fal = FalClient.from_settings(self.settings)
        return self._fal

    def fal_for(self, owner: str) -> FalClient:
        """The fal client for ``owner``'s jobs: their own key's under ``USER_KEYS=on`` (see ``_user_keys``)."""
        return self.fal if self.user_keys is None else self.user_keys.client(owner)

    async def aclose(self) -> None:
        """Close the fal client if one was made."""
        if self._fal is not None:
            await self._fal.aclose()

    # ------------------------------------------------------------------------------- submit, follow

    def reconcile_in_background(self, intent: SubmitIntent, *, abandoned: bool = False) -> None:
        """Keep looking a leftover submission up in fal's history until it is found or surely absent.

        ``abandoned``: the client gave up while the submit was in flight. Found, the job is then
        treated as any job the client stopped waiting for: cancelled if still queued, else kept.
        """

        async def attempt() -> bool:
            outcome, record = await self.reconciler.reconcile(intent)
            if record is not None:
                if abandoned:
                    await stop_waiting(self, record)
                else:
                    self.follow_in_background(record)
            return outcome != "waiting"

        self.background.start(
            f"reconcile {intent.intent_id}",
            attempt,
            first_delay=_RECONCILE_RETRY_FIRST,
            max_delay=_RECONCILE_RETRY_MAX,
        )

    def get(self, job_id: str, owner: str | None = None) -> JobRecord:
        """The journalled job, or an ``UnknownJobError`` that shows what ids look like.

        ``owner``: the user asking, who sees only their jobs (``_lookup``); None only for the server's
        own work on a job, whoever owns it.
        """
        record = self.journal.get(job_id.strip(), owner)
        if record is None:
            raise unknown_job(self, job_id, owner)
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
        wait_for_holder: bool = True,
    ) -> tuple[JobRecord, list[str]]:
        """Follow a job for at most ``seconds``; finish it if it completes. Returns it and its log lines.

        A job another replica follows is finished by that replica: ``wait_for_holder``, this waits
        (within ``seconds``) for the journal to show it finished; else it returns at once.
        """
        if record.is_terminal:
            return record, []
        with self.follower.watching(record.job_id):  # no background follower needed meanwhile
            return await self._follow(record, seconds, logs, on_status, wait_for_holder)

    async def _follow(
        self,
        record: JobRecord,
        seconds: float,
        logs: bool,
        on_status: StatusCallback | None,
        wait_for_holder: bool,
    ) -> tuple[JobRecord, list[str]]:
        log_lines: list[str] = []
        completed = False
        deadline = anyio.current_time() + seconds
        with anyio.move_on_after(seconds):
            stream = self.fal_for(record.owner).stream_status(self.handle(record), logs=logs)
            async with aclosing(stream) as updates:
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
            record = await self._finish_by(record.job_id, deadline)
            if not record.is_terminal and wait_for_holder:
                record = await self.follower.wait_for_holder(record.job_id, deadline)
        return record, log_lines

    async def _finish_by(self, job_id: str, deadline: float) -> JobRecord:
        """``finish``, trying again through fal's passing trouble until ``deadline``; then as it stands."""
        delay = 0.25
        while True:
            try:
                return await self.finish(job_id)
            except (UpstreamUnavailableError, RateLimitedError, FalTimeoutError) as exc:
                if anyio.current_time() + delay > deadline:
                    raise
                logger.info("fetching the result of %s: %s; trying again in %.2f s", job_id, exc, delay)
                await anyio.sleep(delay)
                delay = min(delay * 2, 5.0)

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
        status = await self.fal_for(record.owner).status(self.handle(record), logs=logs)
        lines = [entry.message for entry in status.logs or []]
        if status.done:
            return await self.finish(record.job_id), lines
        return self._note(record, status), lines

    def follow_in_background(self, record: JobRecord) -> None:
        """Keep following a job nobody waits for, so its files are saved when it completes (see ``Follower``)."""
        self.follower.follow(record)

    # ------------------------------------------------------------------------------------ finishing

    async def finish(self, job_id: str) -> JobRecord:
        """Fetch the result of a COMPLETED job, save its images and journal the result, once per job."""
        async with self._lock(job_id):
            record = self.get(job_id)
            if record.is_terminal or not self.follower.take(job_id):
                return record  # finished, or another replica follows it and finishes it
            try:
                output = await self.fal_for(record.owner).result(self.handle(record))
            except (ContentPolicyError, ValidationError, JobFailedError, FalTimeoutError) as exc:
                if isinstance(exc, FalTimeoutError) and exc.status_code is None:
                    raise  # fal was slow to answer: the job is fine, ask again later
                return await self._failed(record, exc.message, exc.error_type, status_code=exc.status_code)
            except UpstreamUnavailableError:
                # A 5xx or a broken connection says nothing about the job; its status does.
                status = await self.fal_for(record.owner).status(self.handle(record))
                if status.error:
                    return await self._failed(record, status.error, status.error_type)
                raise
            except FalError as exc:
                if exc.status_code is None or not 400 <= exc.status_code < 500 or exc.status_code == 404:
                    raise
                return await self._failed(
                    record, exc.message, exc.error_type, status_code=exc.status_code
                )  # fal's 4xx: its verdict
            if output is None:
                return record
            images = await self.saver.save_all(record, output)
            finished = record.model_copy(
                update={"completed_at": datetime.now(UTC), "cost_usd": self._final_cost(record, images)}
            )
            result = job_result(finished, "completed", images, self.settings, output=output)
            record = self.journal.update(
                job_id,
                status="completed",
                result=result.model_dump(mode="json"),
                queue_position=None,
                completed_at=finished.completed_at,
                pending_save=has_pending_saves(images),
                cost_usd=finished.cost_usd,
                charge="final",
            )
        await self._finished(record)
        if record.pending_save:
            self.save_in_background(record)
        return record

    async def _failed(
        self, record: JobRecord, error: str, error_type: str | None, *, status_code: int | None = None
    ) -> JobRecord:
        """Journal fal's verdict. The reservation is released unless fal may have billed it (a 422:
        fal says it may charge one when GPU time was spent; it never charges a 5xx or a cancel)."""
        cancelled = error_type in ("client_cancelled", "client_disconnected")
        record = self.journal.update(
            record.job_id,
            status="cancelled" if cancelled else "failed",
            error=error,
            queue_position=None,
            charge="possibly_charged" if status_code == 422 else "released",
        )
        await self._finished(record)
        return record

    def _final_cost(self, record: JobRecord, images: list[ImageInfo]) -> float | None:
        """What the images fal returned cost, at the price reserved; the reservation if sizes are unknown."""
        sizes = [(image.width, image.height) for image in images]
        if (
            record.unit_price is None
            or record.endpoint_id not in MODELS
            or any(None in size for size in sizes)
        ):
            return record.cost_usd
        return self.prices.final(
            MODELS[record.endpoint_id],
            record.unit_price,
            sizes,  # type: ignore[arg-type]
            record.input_megapixels,
        )

    def _lock(self, job_id: str) -> anyio.Lock:
        return self._locks.setdefault(job_id, anyio.Lock())

    async def _finished(self, record: JobRecord) -> None:
        if self.on_finished is not None:
            try:
                await self.on_finished(record)
            except Exception:  # a notification must never turn a finished job into an error
                logger.exception("on_finished failed for %s", record.job_id)

    async def retry_saves(self, record: JobRecord) -> JobRecord:
        """Try once more to save a completed job's unsaved images; the job as now journalled."""
        async with self._lock(record.job_id):
            record = self.get(record.job_id)
            if not record.pending_save or not record.result or not self.follower.take(record.job_id):
                return record  # saved, or another replica saves it
            stored = JobResult.model_validate(record.result)
            images = await self.saver.retry(record, stored.images)
            result = stored.model_copy(
                update={
                    "images": images,
                    "message": message(record, "completed", images, self.settings),
                }
            )
            record = self.journal.update(
                record.job_id, result=result.model_dump(mode="json"), pending_save=has_pending_saves(images)
            )
        if not record.pending_save:
            logger.info("saved the remaining images of %s", record.job_id)
            await self._finished(record)
        else:  # this replica holds the job now: it keeps trying (a no-op when already trying)
            self.save_in_background(record)
        return record

    def save_in_background(self, record: JobRecord) -> None:
        """Keep retrying a job's unsaved images until they are saved or fal's URL is gone (see ``Follower``)."""
        self.follower.save(record)

    async def previews(self, record: JobRecord) -> list[Preview]:
        """The previews made when the job finished (an image whose preview is missing is skipped)."""
        if not record.result:
            return []
        return await self.saver.previews(record.job_id, JobResult.model_validate(record.result).images)

    # ------------------------------------------------------------------------------------- describing

    def describe(
        self, record: JobRecord, *, logs: list[str] | None = None, waited: float | None = None
    ) -> JobResult:
        """The structured view of a job in any state; a completed job's stored result is served as built."""
        return describe(record, self.settings, logs=logs, waited=waited)
