"""Jobs and their state machine, driven by timestamps rather than by a ticking worker.

Every transition has an exact time computed from the job's timestamps (submitted, phantom queue
cleared, slot free, duration elapsed, start deadline). ``JobStore.advance(now)`` replays the
transitions due by ``now`` in time order, so a status read between two scheduler wake-ups is still
exact, and the scheduler only has to sleep until ``next_event_time()`` to push changes promptly.

Everything here is confined to the server's event loop thread: no locks.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fal_flux_mcp.fal._urls import EndpointId
from fal_flux_mcp.models import FalInput

IN_QUEUE = "IN_QUEUE"
IN_PROGRESS = "IN_PROGRESS"
COMPLETED = "COMPLETED"

#: Outcomes of a job. The first four are decided at submit; the last two replace them when they happen.
OK = "ok"
INVALID = "invalid"
CONTENT_POLICY = "content_policy"
RUNNER_DISCONNECTED = "runner_disconnected"
CLIENT_CANCELLED = "client_cancelled"
STARTUP_TIMEOUT = "startup_timeout"

#: Infrastructure failures: reported in the COMPLETED status (``error``/``error_type``) and answered
#: on the result call with a flat ``{"detail", "error_type"}`` body. Model failures (422) are not.
INFRASTRUCTURE_ERRORS: dict[str, tuple[int, str]] = {
    RUNNER_DISCONNECTED: (503, "The runner disconnected while processing the request."),
    STARTUP_TIMEOUT: (504, "The request did not start before its start timeout (X-Fal-Request-Timeout)."),
    CLIENT_CANCELLED: (499, "The request was cancelled by the client."),
}


@dataclass(eq=False)
class Job:
    """One submitted request: what was asked, when it runs, and how it ends."""

    request_id: str
    endpoint: EndpointId
    origin: str
    arguments: Any
    model_input: FalInput | None
    errors: list[dict[str, Any]] | None
    planned: str
    nsfw: bool
    seed: int
    submitted_at: float
    wall_offset: float
    ready_at: float
    queue_step: float
    duration: float
    priority: int = 0
    start_timeout: float | None = None
    webhook_url: str | None = None
    runner_hint: str | None = None
    sync: bool = False
    #: The key id of the account that submitted it: only that account's keys find it.
    account: str = ""
    seq: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    full_path_urls: bool = False
    outcome: str | None = None
    input_megapixels: int = 0
    cancel_requested: bool = False
    output: asyncio.Future[dict[str, Any]] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def endpoint_id(self) -> str:
        """The full id the job was submitted to, sub-path included (what picks its input model)."""
        return str(self.endpoint)

    @property
    def state(self) -> str:
        """fal's status word; there is no FAILED or CANCELLED, a failed job is COMPLETED too."""
        if self.finished_at is not None:
            return COMPLETED
        if self.started_at is not None:
            return IN_PROGRESS
        return IN_QUEUE

    @property
    def start_deadline(self) -> float | None:
        """When the job fails with ``startup_timeout`` if it has not started (X-Fal-Request-Timeout)."""
        return None if self.start_timeout is None else self.submitted_at + self.start_timeout

    def urls(self) -> dict[str, str]:
        """fal's follow-up URLs: owner/alias form, the sub-path dropped, as fal answers (or the full path)."""
        prefix = self.endpoint_id if self.full_path_urls else self.endpoint.app
        base = f"{self.origin}/{prefix}/requests/{self.request_id}"
        return {"response_url": base, "status_url": f"{base}/status", "cancel_url": f"{base}/cancel"}

    def served_under(self, prefix: str) -> bool:
        """Whether ``prefix/requests/<id>`` addresses this job: owner/alias or the full endpoint id."""
        return not self.sync and prefix.strip("/") in (self.endpoint.app, self.endpoint_id)


class JobStore:
    """All jobs, the queue and the running set, advanced lazily to any instant."""

    def __init__(self, max_concurrent: Callable[[], int | None], on_finish: Callable[[Job], None]) -> None:
        self.jobs: dict[str, Job] = {}
        self._max_concurrent = max_concurrent
        self._on_finish = on_finish
        self._queued: list[Job] = []
        self._running: list[Job] = []
        self._clock = 0.0
        self._limit = max_concurrent()
        self._seq = itertools.count()
        self.changed = asyncio.Event()
        """Set (and replaced) at every transition: what status streams wait on."""
        self.wakeup = asyncio.Event()
        """Set when the schedule changed outside ``advance`` (a submit, a cancel)."""

    # ----------------------------------------------------------------------------------------------
    # Mutations

    def add(self, job: Job, now: float) -> None:
        """Enqueue ``job`` (or, for a synchronous run, start it at once)."""
        self.advance(now)
        self._clock = max(self._clock, now)
        job.seq = next(self._seq)
        self.jobs[job.request_id] = job
        if job.sync:
            job.started_at = now
            self._running.append(job)
        else:
            self._queued.append(job)
        self.advance(now)
        self.notify()

    def cancel(self, job: Job, now: float, honour_in_progress: bool) -> bool:
        """Cancel ``job``; False when it had already finished. A queued job never runs."""
        self.advance(now)
        if job.finished_at is not None:
            return False
        self._clock = max(self._clock, now)
        job.cancel_requested = True
        if job.started_at is None:
            self._queued.remove(job)
            self._finish(job, now, CLIENT_CANCELLED)
        elif honour_in_progress:
            self._running.remove(job)
            self._finish(job, now, CLIENT_CANCELLED)
        self.notify()
        return True

    def running_count(self, now: float) -> int:
        """Jobs in progress at ``now``: what a direct run is checked against."""
        self.advance(now)
        return len(self._running)

    def notify(self) -> None:
        """Wake whatever waits for a change: status streams and the scheduler."""
        self.changed.set()
        self.changed = asyncio.Event()
        self.wakeup.set()

    # ----------------------------------------------------------------------------------------------
    # Time

    def advance(self, now: float) -> None:
        """Apply every transition due by ``now``, each at its own exact time, in time order."""
        changed = self._replay(now)
        limit = self._max_concurrent()
        if limit != self._limit:
            # The concurrency knob changed at some instant since the last call; the best known
            # instant is now, so queued jobs it releases start now rather than in the past.
            self._limit = limit
            self._clock = max(self._clock, now)
            changed = self._replay(now) or changed
        if changed:
            self.notify()

    def _replay(self, now: float) -> bool:
        changed = False
        while (event := self._next_event()) is not None and event[0] <= now:
            at, rank, job = event
            self._clock = max(self._clock, at)
            if rank == 0:
                self._running.remove(job)
                self._finish(job, at, job.planned)
            elif rank == 1:
                self._queued.remove(job)
                job.started_at = at
                self._running.append(job)
            else:
                self._queued.remove(job)
                self._finish(job, at, STARTUP_TIMEOUT)
            changed = True
        return changed

    def next_event_time(self) -> float | None:
        """When the next transition is due, if one is scheduled."""
        event = self._next_event()
        return None if event is None else event[0]

    def _next_event(self) -> tuple[float, int, Job] | None:
        # (time, rank, seq): at equal times jobs finish before others start, and a start beats
        # a start deadline falling on the same instant.
        best: tuple[float, int, int, Job] | None = None

        def consider(at: float, rank: int, job: Job, order: int) -> None:
            nonlocal best
            if best is None or (at, rank, order) < best[:3]:
                best = (at, rank, order, job)

        for job in self._running:
            consider(job.started_at + job.duration, 0, job, job.seq)  # type: ignore[operator]
        limit = self._limit
        if self._queued and (limit is None or len(self._running) < limit):
            first = min(self._queued, key=lambda j: (max(j.ready_at, self._clock), j.priority, j.seq))
            consider(max(first.ready_at, self._clock), 1, first, first.seq)
        for job in self._queued:
            deadline = job.start_deadline
            if deadline is not None:
                consider(deadline, 2, job, job.seq)
        return None if best is None else (best[0], best[1], best[3])

    def _finish(self, job: Job, at: float, outcome: str) -> None:
        job.finished_at = at
        job.outcome = outcome
        job.done.set()
        self._on_finish(job)

    # ----------------------------------------------------------------------------------------------
    # Views

    def position(self, job: Job, now: float) -> int:
        """Requests ahead of ``job``: its phantoms not yet cleared plus real jobs before it in line."""
        if job.started_at is not None or job.finished_at is not None:
            return 0
        ahead = sum(1 for other in self._queued if (other.priority, other.seq) < (job.priority, job.seq))
        return _phantoms(job, now) + ahead

    def next_view_change(self, job: Job, now: float, with_logs: bool) -> float | None:
        """When ``job``'s status body changes next without a transition (a phantom clears, a log line)."""
        if job.finished_at is not None:
            return None
        if job.started_at is None:
            phantoms = _phantoms(job, now)
            return job.ready_at - (phantoms - 1) * job.queue_step if phantoms else None
        if with_logs:
            upcoming = [
                job.started_at + offset for offset, _, _ in log_plan(job) if job.started_at + offset > now
            ]
            return min(upcoming, default=None)
        return None

    def status_body(self, job: Job, now: float, with_logs: bool) -> dict[str, Any]:
        """The status JSON fal answers for ``job`` at ``now`` (section 4.2 of the protocol notes)."""
        self.advance(now)
        body: dict[str, Any] = {"status": job.state, "request_id": job.request_id, **job.urls()}
        if job.state == IN_QUEUE:
            body["queue_position"] = self.position(job, now)
            return body
        body["logs"] = log_entries(job, now) if with_logs else None
        if job.state == COMPLETED:
            started, finished = job.started_at, job.finished_at
            body["metrics"] = {"inference_time": round(finished - started, 6)} if started is not None else {}  # type: ignore[operator]
            if job.outcome in INFRASTRUCTURE_ERRORS:
                body["error"] = INFRASTRUCTURE_ERRORS[job.outcome][1]
                body["error_type"] = job.outcome
        return body


def _phantoms(job: Job, now: float) -> int:
    remaining = job.ready_at - now
    if remaining <= 0 or job.queue_step <= 0:
        return 0
    return max(0, math.ceil(remaining / job.queue_step - 1e-9))


def log_plan(job: Job) -> list[tuple[float, str, str]]:
    """The log lines a job prints, as (seconds after start, level, message): progress over time."""
    if job.planned == INVALID:
        return []
    steps = int(getattr(job.model_input, "num_inference_steps", 28) or 28)
    count = getattr(job.model_input, "num_images", 1)
    plan = [(0.0, "INFO", f"Generating {count} image(s) with seed {job.seed}")]
    for fraction in (0.25, 0.5, 0.75):
        plan.append((job.duration * fraction, "INFO", f"Step {max(1, round(steps * fraction))}/{steps}"))
    if job.planned == RUNNER_DISCONNECTED:
        plan.append((job.duration, "ERROR", "Runner process exited unexpectedly"))
    else:
        plan.append((job.duration, "INFO", f"Step {steps}/{steps}"))
    return plan


def log_entries(job: Job, now: float) -> list[dict[str, Any]]:
    """The log lines visible at ``now``: those printed before now and before the job ended."""
    if job.started_at is None:
        return []
    until = now if job.finished_at is None else min(now, job.finished_at)
    entries = []
    for offset, level, message in log_plan(job):
        at = job.started_at + offset
        if at > until:
            break
        stamp = datetime.fromtimestamp(job.wall_offset + at, UTC).isoformat()
        entries.append({"message": message, "level": level, "source": "USER", "timestamp": stamp})
    return entries
