"""Following jobs in the background, one replica per job, and taking over from a replica that died.

Every server process is a replica with its own id (``holder``). Each job fal may still be working on,
or whose images are still to be saved, is followed by one replica at a time: the one holding the job's
lease in the journal (``Journal.claim``). So that a job is finished once, however many servers share
the journal:

- the replica that submits a job takes its lease with the job's first write (``_submit``);
- only the lease's holder finishes a job: fetches the result, saves the images, records the final cost
  (``JobService.finish`` and ``retry_saves`` claim first, and leave a job alone that another follows);
- the holder renews every lease it holds several times per lease length (``run``), and gives them up
  when it stops cleanly; a job that ends loses its lease in the journal;
- every replica looks about once a second for jobs that no one follows, or whose holder stopped renewing
  (it died), claims them and follows them in the background (``take_over``): a killed replica's jobs
  are finished by another within a lease length and a second or so;
- a replica asked to wait for a job another one follows watches the journal for the result instead of
  finishing it itself (``wait_for_holder``), woken by the job's change notification, and takes the job
  over if its holder goes away meanwhile.

With one process on SQLite all of this holds trivially: it is the only replica.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import anyio

from fal_flux_mcp.server._journal import JobRecord

if TYPE_CHECKING:
    from fal_flux_mcp.server._jobs import JobService

logger = logging.getLogger("fal_flux_mcp.server")

#: How long a background follower keeps watching a job the client stopped waiting for.
FOLLOW_SECONDS = 6 * 3600
#: The first and the longest wait of a background follower before it asks fal again after a failure.
_FOLLOW_RETRY_FIRST = 1.0
_FOLLOW_RETRY_MAX = 60.0
#: The first wait before saving an image again, and the longest (a full disk may take a while to clear).
_SAVE_RETRY_FIRST = 1.0
_SAVE_RETRY_MAX = 300.0
#: The longest time between two looks for jobs no one follows (and between two renewals).
_SCAN_SECONDS = 1.0
#: The longest a replica waiting for another's result goes without reading the journal again, should
#: the change notification not reach it.
_RECHECK_SECONDS = 0.5
#: How long a replica waits for another to record the end of a job fal says is done.
_FINISH_WAIT_SECONDS = 10.0


def default_replica_id() -> str:
    """A replica id that says where the replica runs and is unique even across restarts."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


class Follower:
    """This replica's leases on following jobs, its background followers, and its takeovers."""

    def __init__(self, jobs: JobService) -> None:
        self.jobs = jobs
        self.journal = jobs.journal
        #: This replica's id in the journal's leases (``FLUX_MCP_REPLICA_ID``, else a fresh one).
        self.holder = jobs.settings.replica_id or default_replica_id()
        #: How long a lease lasts unless renewed (``FLUX_MCP_LEASE_SECONDS``).
        self.lease_seconds = jobs.settings.lease_seconds
        self._changed: dict[str, anyio.Event] = {}
        self._watched: Counter[str] = Counter()
        self._running: anyio.CancelScope | None = None
        self._stopped: anyio.Event | None = None

    @property
    def interval(self) -> float:
        """How often leases are renewed and unfollowed jobs looked for: at least three times a lease."""
        return min(_SCAN_SECONDS, self.lease_seconds / 3)

    def take(self, job_id: str) -> bool:
        """Claim (or renew) this replica's lease on ``job_id``: True if this replica is now its follower.

        False when another live replica follows it, or when it needs no following (it ended).
        """
        return self.journal.claim(job_id, self.holder, self.lease_seconds)

    @contextmanager
    def watching(self, job_id: str) -> Iterator[None]:
        """A caller here follows ``job_id`` for a while (a tool waiting for it): no background follower
        is needed for it meanwhile."""
        self._watched[job_id] += 1
        try:
            yield
        finally:
            self._watched[job_id] -= 1
            if not self._watched[job_id]:
                del self._watched[job_id]

    def _unattended(self, job_id: str) -> bool:
        return not (
            self._watched[job_id]
            or self.jobs.background.running(f"follow {job_id}")
            or self.jobs.background.running(f"save {job_id}")
        )

    def followed_elsewhere(self, job_id: str) -> bool:
        """Whether another live replica follows ``job_id`` (and so records what becomes of it)."""
        lease = self.journal.lease(job_id)
        return lease is not None and lease.holder != self.holder and not lease.expired()

    def follow(self, record: JobRecord) -> None:
        """Follow a job in the background until it ends, if this replica can take its lease.

        Every read is retried inside the fal client already; what still fails (fal down for a while,
        a rate limit that outlasts the retries) is waited out with a backoff, never given up on
        before the job's follow time is over. A job another replica follows is left to it (the
        takeover scan brings it back here should that replica die).
        """
        if record.is_terminal:
            return
        job_id = record.job_id
        deadline = anyio.current_time() + FOLLOW_SECONDS

        async def attempt() -> bool:
            current = self.jobs.get(job_id)
            if current.is_terminal or not self.take(job_id):
                return True
            if (left := deadline - anyio.current_time()) > 0:
                await self.jobs.follow(current, seconds=left, wait_for_holder=False)
            return True  # finished, or its follow time is over: check_status still finds it

        self.jobs.background.start(
            f"follow {job_id}",
            attempt,
            first_delay=_FOLLOW_RETRY_FIRST,
            max_delay=_FOLLOW_RETRY_MAX,
            give_up_after=FOLLOW_SECONDS,
        )

    def save(self, record: JobRecord) -> None:
        """Keep retrying a job's unsaved images, backing off, until they are saved or fal's URL is gone."""
        job_id = record.job_id

        async def attempt() -> bool:
            if not self.take(job_id):  # saved meanwhile, or another replica saves it
                return True
            return not (await self.jobs.retry_saves(self.jobs.get(job_id))).pending_save

        self.jobs.background.start(
            f"save {job_id}",
            attempt,
            first_delay=_SAVE_RETRY_FIRST,
            max_delay=_SAVE_RETRY_MAX,
            wait_first=True,
        )

    def job_changed(self, job_id: str) -> None:
        """Wake whoever here waits for ``job_id``'s holder (its change notification arrived)."""
        event = self._changed.pop(job_id, None)
        if event is not None:
            event.set()

    async def wait_for_holder(self, job_id: str, deadline: float) -> JobRecord:
        """The job once the replica that follows it has recorded its end, or as it stands at ``deadline``.

        Should the holder go away meanwhile (its lease expires or is given up), this replica takes the
        job over and finishes it itself.
        """
        while True:
            record = self.jobs.get(job_id)
            left = deadline - anyio.current_time()
            if record.is_terminal or left <= 0:
                return record
            if self.take(job_id):
                try:
                    return await self.jobs.finish(job_id)
                finally:  # not finished now (fal trouble): this replica follows it from here
                    self.follow(self.jobs.get(job_id))
            event = self._changed.setdefault(job_id, anyio.Event())
            with anyio.move_on_after(min(_RECHECK_SECONDS, left)):
                await event.wait()

    async def finish_or_wait(self, job_id: str, seconds: float = _FINISH_WAIT_SECONDS) -> JobRecord:
        """Finish a job fal says is done: here if this replica follows it, else by waiting (at most
        ``seconds``) for the replica that does."""
        record = await self.jobs.finish(job_id)
        if record.is_terminal:
            return record
        return await self.wait_for_holder(job_id, anyio.current_time() + seconds)

    async def take_over(self) -> int:
        """Claim every job no replica follows and follow it in the background; how many were taken."""
        taken = 0
        for record in await anyio.to_thread.run_sync(self.journal.unfollowed):
            if not self.take(record.job_id):
                continue  # another replica was quicker
            taken += 1
            logger.info(
                "following job %s (%s), which no running server followed", record.job_id, record.status
            )
            self._attend(record)
        return taken

    async def renew(self) -> None:
        """Renew every lease this replica holds, and follow again any of those jobs nothing here follows
        (its background work stopped on an unexpected error): a job held is never a job forgotten."""
        held = await anyio.to_thread.run_sync(self.journal.renew, self.holder, self.lease_seconds)
        for job_id in held:
            if self._unattended(job_id) and (record := self.journal.get(job_id)) is not None:
                logger.info("following job %s again: nothing here followed it", job_id)
                self._attend(record)

    def _attend(self, record: JobRecord) -> None:
        if record.is_terminal:
            self.save(record)
        else:
            self.follow(record)

    async def run(self) -> None:
        """Renew this replica's leases and take over unfollowed jobs, until cancelled.

        The first look is at once: at start, the jobs an earlier run left unfinished (or a dead
        replica's, once their leases expire) are claimed and followed.
        """
        self._stopped = stopped = anyio.Event()
        with anyio.CancelScope() as self._running:
            try:
                while True:
                    try:
                        await self.renew()
                        await self.take_over()
                    except Exception:  # the database may be away for a moment; the next round tries again
                        logger.exception("could not renew leases or look for jobs to take over")
                    await anyio.sleep(self.interval)
            finally:
                stopped.set()

    async def stop(self) -> None:
        """Stop renewing and taking over (a round under way ends first), then give up every lease:
        another replica takes this one's jobs over at once."""
        if self._running is not None and self._stopped is not None:
            self._running.cancel()
            await self._stopped.wait()
        try:
            released = self.journal.release_all(self.holder)
        except Exception:  # they expire by themselves
            logger.exception("could not give up this server's leases")
            return
        if released:
            logger.info("gave up following %d unfinished job(s); another server takes them over", released)
