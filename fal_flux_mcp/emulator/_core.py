"""The emulator's shared state: ``Core`` holds the jobs, the files, the counters and the faults.

The routes only translate HTTP into calls on ``Core``; what a job is, when it runs, what it produces
and what its result call answers are decided here. ``Core`` lives on the server's event loop, and
only ``counters``, ``faults`` and ``config`` are touched from other threads. ``JobInfo`` is the
snapshot of one job that tests read through ``Emulator.job``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import os
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from starlette.responses import Response

from fal_flux_mcp.emulator import _jobs as jobs
from fal_flux_mcp.emulator._config import EmulatorConfig
from fal_flux_mcp.emulator._edits import InputRejected, load_inputs, mask_mismatch, render_edit
from fal_flux_mcp.emulator._faults import FaultInjector
from fal_flux_mcp.emulator._render import content_type, render
from fal_flux_mcp.emulator._responses import json_response
from fal_flux_mcp.emulator._storage import FileStore
from fal_flux_mcp.emulator._validation import FieldErrors
from fal_flux_mcp.emulator._webhooks import WebhookSigner, deliver, webhook_body
from fal_flux_mcp.fal._urls import EndpointId
from fal_flux_mcp.models import FalInput, output_size
from fal_flux_mcp.registry import MODELS, megapixels_of

log = logging.getLogger("fal_flux_mcp.emulator")

#: The registry tasks whose output shows their input images (Redux varies its input without showing it).
_EDIT_TASKS = frozenset({"image-edit", "multi-image-edit", "inpaint"})
#: FLUX.2 [pro], [flex] and [max] answer only ``images`` and ``seed``.
_IMAGES_AND_SEED_ONLY = ("fal-ai/flux-2-pro", "fal-ai/flux-2-flex", "fal-ai/flux-2-max")

_CONTENT_POLICY_MSG = (
    "The content could not be processed because it contained material flagged by a content checker."
)


@dataclass(frozen=True, slots=True)
class JobInfo:
    """A snapshot of one job for tests: what was asked and where it stands."""

    request_id: str
    endpoint_id: str
    state: str
    queue_position: int
    input: Any
    priority: str
    start_timeout: float | None
    webhook_url: str | None
    runner_hint: str | None
    sync: bool
    started: bool
    cancel_requested: bool
    cancelled: bool
    outcome: str | None
    error_type: str | None
    seed: int
    finished_at: float | None
    """When the job completed, on ``time.monotonic``'s clock (for measuring a client's lag)."""
    account: str = ""
    """The key id of the account that submitted it."""


class Core:
    """State shared by the routes: config, jobs, files, counters, faults, signing key."""

    def __init__(self, config: EmulatorConfig, storage_root: Path) -> None:
        self.config = config
        self.counters: Counter[str] = Counter()
        self.faults = FaultInjector()
        self.files = FileStore(storage_root)
        self.signer = WebhookSigner()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._store: jobs.JobStore | None = None
        self._closing: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._executor: ThreadPoolExecutor | None = None
        self._http: httpx.AsyncClient | None = None
        self.pending_files: dict[str, asyncio.Task[None]] = {}
        """Generated files still rendering, by key: a download waits for them."""

    # ----------------------------------------------------------------------------------------------
    # Lifecycle (on the server's loop)

    async def startup(self) -> None:
        """Create the loop-bound parts and start the scheduler."""
        self.loop = asyncio.get_running_loop()
        self._closing = asyncio.Event()
        self._store = jobs.JobStore(lambda: self.config.max_concurrent, self._on_finish)
        self._executor = ThreadPoolExecutor(
            max_workers=min(4, os.cpu_count() or 2), thread_name_prefix="fal-flux-mcp-emulator-render"
        )
        self._http = httpx.AsyncClient()
        self._render = functools.lru_cache(maxsize=self.config.render_cache)(render)
        self._spawn(self._schedule())

    def begin_shutdown(self) -> None:
        """End status streams and waiting runs so the server can close their connections."""
        if self._closing is not None:
            self._closing.set()
        if self._store is not None:
            self._store.notify()

    async def shutdown(self) -> None:
        """Stop the scheduler and pending deliveries; release threads and connections."""
        self.begin_shutdown()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    @property
    def store(self) -> jobs.JobStore:
        """The job store; it exists once the server's loop runs."""
        assert self._store is not None, "emulator not started"
        return self._store

    @property
    def closing(self) -> asyncio.Event:
        """Set when the server stops, so long-lived responses end instead of holding it up."""
        assert self._closing is not None, "emulator not started"
        return self._closing

    def _spawn(self, coroutine: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _schedule(self) -> None:
        """Apply transitions when they fall due; sleeps until the next one rather than polling."""
        store = self.store
        while True:
            store.wakeup.clear()
            now = time.monotonic()
            store.advance(now)
            due = store.next_event_time()
            # Knob changes do not wake the scheduler, so never sleep longer than a tenth of a second.
            timeout = 0.1 if due is None else min(0.1, max(0.0, due - time.monotonic()))
            await wait_until_set(store.wakeup, timeout)

    # ----------------------------------------------------------------------------------------------
    # Jobs

    def create_job(
        self,
        endpoint: EndpointId,
        origin: str,
        arguments: Any,
        model_input: FalInput | None,
        errors: FieldErrors | None,
        *,
        priority: int = 0,
        start_timeout: float | None = None,
        webhook_url: str | None = None,
        runner_hint: str | None = None,
        sync: bool = False,
        account: str = "",
    ) -> jobs.Job:
        """Register a job; its outcome (but for cancels and timeouts) is decided here, as input is known."""
        config = self.config
        now = time.monotonic()
        planned, nsfw = jobs.INVALID, False
        if model_input is not None:
            prompt = (getattr(model_input, "prompt", "") or "").lower()
            if _triggered(config.runner_failure_word, prompt):
                planned = jobs.RUNNER_DISCONNECTED
            elif _triggered(config.content_policy_word, prompt):
                planned = jobs.CONTENT_POLICY
            else:
                planned, nsfw = jobs.OK, _triggered(config.nsfw_word, prompt)
        seed = getattr(model_input, "seed", None)
        job = jobs.Job(
            request_id=str(uuid.uuid4()),
            endpoint=endpoint,
            origin=origin,
            arguments=arguments,
            model_input=model_input,
            errors=errors,
            planned=planned,
            nsfw=nsfw,
            seed=seed if seed is not None else secrets.randbelow(2**32),
            submitted_at=now,
            wall_offset=time.time() - now,
            ready_at=now if sync else now + config.queue_depth * config.queue_step_seconds,
            queue_step=config.queue_step_seconds,
            # A fal app rejects invalid input before any work, so such jobs end as soon as they start.
            duration=0.0 if planned == jobs.INVALID else config.job_seconds,
            priority=priority,
            start_timeout=start_timeout,
            webhook_url=webhook_url,
            runner_hint=runner_hint,
            sync=sync,
            account=account,
            full_path_urls=config.request_routes == "full_path",
        )
        if planned == jobs.OK:
            # Rendered ahead of time (it is deterministic) so the result is ready when the job
            # completes; the files only become reachable through the result's URLs.
            job.output = self._spawn(self._produce_output(job))
        self.store.add(job, now)
        log.debug("job %s %s submitted (%s)", job.request_id, job.endpoint_id, planned)
        return job

    async def _produce_output(self, job: jobs.Job) -> dict[str, Any]:
        """The job's output. Its files render in the background: a result only needs their URLs and
        sizes, and a download of a file still rendering waits for it, as a CDN fetch would.

        An edit reads its input images first (``InputRejected`` if one is gone, or a Fill's mask does
        not match its image): its output size and look follow them."""
        assert job.model_input is not None and self._http is not None
        model_input = job.model_input
        info = MODELS.get(job.endpoint_id)
        edit = None
        if info is not None and info.task in _EDIT_TASKS:
            edit = await load_inputs(model_input, job.origin, self.files, self._http)
            if (mismatch := mask_mismatch(edit)) is not None:
                raise InputRejected(mismatch)
            sizes = edit.sizes()
            billed = sizes[:-1] if edit.mask is not None else sizes
            job.input_megapixels = info.billed_input_megapixels(billed)
        width, height = output_size(job.endpoint_id, model_input, edit.sizes() if edit else ())
        output_format = getattr(model_input, "output_format", "jpeg")
        mime = content_type(output_format)
        prompt = getattr(model_input, "prompt", "") or ""
        count = getattr(model_input, "num_images", 1)
        loop = asyncio.get_running_loop()
        look = self.config.look

        async def encoded(index: int) -> bytes:
            seed = job.seed + index
            if edit is not None:
                return await loop.run_in_executor(
                    self._executor, render_edit, prompt, seed, edit, width, height, output_format, job.nsfw
                )
            return await loop.run_in_executor(
                self._executor,
                self._render,
                prompt,
                seed,
                width,
                height,
                output_format,
                job.nsfw,
                look,
            )

        async def stored(key: str, index: int) -> None:
            try:
                await loop.run_in_executor(
                    self._executor, self.files.put_bytes, key, await encoded(index), mime
                )
            finally:
                self.pending_files.pop(key, None)

        if getattr(model_input, "sync_mode", False):
            images = await asyncio.gather(*(encoded(index) for index in range(count)))
            urls = [f"data:{mime};base64,{base64.b64encode(data).decode()}" for data in images]
        else:
            urls = []
            for index in range(count):
                key = self.files.new_key(None, mime)
                self.pending_files[key] = self._spawn(stored(key, index))
                urls.append(f"{job.origin}/files/{key}")
        output: dict[str, Any] = {
            "images": [{"url": url, "width": width, "height": height, "content_type": mime} for url in urls],
            "seed": job.seed,
        }
        if not job.endpoint_id.startswith(_IMAGES_AND_SEED_ONLY):
            output |= {
                "timings": {"inference": job.duration},
                "has_nsfw_concepts": [job.nsfw] * count,
                "prompt": prompt,
            }
        return output

    def _on_finish(self, job: jobs.Job) -> None:
        log.debug("job %s completed (%s)", job.request_id, job.outcome)
        if job.webhook_url and not job.sync:
            self._spawn(self._send_webhook(job))

    async def _send_webhook(self, job: jobs.Job) -> None:
        status, body, _ = await self.result_of(job)
        assert self._http is not None and job.webhook_url is not None
        config = self.config
        delivered = await deliver(
            self._http,
            job.webhook_url,
            webhook_body(job.request_id, status, body),
            signer=self.signer if config.sign_webhooks and self.signer.available else None,
            user_id=config.user_id,
            attempts=config.webhook_attempts,
            retry_seconds=config.webhook_retry_seconds,
            timeout=config.webhook_timeout_seconds,
        )
        if not delivered:
            log.warning("webhook for %s to %s was not delivered", job.request_id, job.webhook_url)

    async def result_of(self, job: jobs.Job) -> tuple[int, Any, dict[str, str]]:
        """What the result call answers for a finished job: status, JSON body, extra headers."""
        outcome = job.outcome
        if outcome == jobs.OK:
            assert job.output is not None
            try:
                output = await asyncio.shield(job.output)
            except InputRejected as exc:  # an input the app could not use: fal's 422
                return 422, {"detail": exc.errors}, {}
            return 200, output, {"x-fal-billable-units": _billable_units(job, output)}
        if outcome == jobs.INVALID:
            return 422, {"detail": job.errors}, {}
        if outcome == jobs.CONTENT_POLICY:
            detail = [
                {
                    "loc": ["body", "prompt"],
                    "msg": _CONTENT_POLICY_MSG,
                    "type": "content_policy_violation",
                    "url": "https://docs.fal.ai/errors#content_policy_violation",
                    "input": getattr(job.model_input, "prompt", ""),
                }
            ]
            return 422, {"detail": detail}, {"X-Fal-Retryable": "false"}
        status, message = jobs.INFRASTRUCTURE_ERRORS[outcome or ""]
        headers = {"X-Fal-Error-Type": outcome or ""}
        if outcome == jobs.STARTUP_TIMEOUT:
            headers["X-Fal-Request-Timeout-Type"] = "user"
        return status, {"detail": message, "error_type": outcome}, headers

    async def result_response(self, job: jobs.Job) -> Response:
        """``result_of`` as the HTTP response the result and run routes send."""
        status, body, headers = await self.result_of(job)
        return json_response(body, status, job.request_id, headers)

    def job_info(self, request_id: str) -> JobInfo:
        """A snapshot of a job, for tests (on the loop)."""
        job = self.store.jobs[request_id]
        now = time.monotonic()
        self.store.advance(now)
        return JobInfo(
            request_id=job.request_id,
            endpoint_id=job.endpoint_id,
            state=job.state,
            queue_position=self.store.position(job, now),
            input=job.arguments,
            priority="low" if job.priority else "normal",
            start_timeout=job.start_timeout,
            webhook_url=job.webhook_url,
            runner_hint=job.runner_hint,
            sync=job.sync,
            account=job.account,
            started=job.started_at is not None,
            cancel_requested=job.cancel_requested,
            cancelled=job.outcome == jobs.CLIENT_CANCELLED,
            outcome=job.outcome,
            error_type=job.outcome if job.outcome in jobs.INFRASTRUCTURE_ERRORS else None,
            seed=job.seed,
            finished_at=job.finished_at,
        )


def _triggered(word: str, prompt: str) -> bool:
    return bool(word) and word.lower() in prompt


def _billable_units(job: jobs.Job, output: dict[str, Any]) -> str:
    count = len(output["images"])
    info = MODELS.get(job.endpoint_id)
    if info is None or info.price_unit == "image":
        return str(count)
    sizes = [(image["width"], image["height"]) for image in output["images"]]
    return str(megapixels_of(sizes) + job.input_megapixels)


async def wait_until_set(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait for ``event`` at most ``timeout`` seconds; whether it was set."""
    if timeout is not None and timeout <= 0:
        return event.is_set()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
    return event.is_set()
