"""The journal's leases: which replica (server process) follows each job that needs following.

One replica at a time follows each job that is unfinished or has images still to save: it holds
the job's lease (``lease_holder``, until ``lease_expires``) and renews it well before it expires.
A lease that expired (its holder died) or that no one holds may be claimed by any replica. Each
change is one conditional UPDATE, so two replicas claiming at once cannot both win. A job that
ends (terminal, nothing left to save) loses its lease in ``update``.

``Journal`` has these methods through ``JournalLeases``; they are written in SQL both backends accept.
Times are stored as the journal stores every time: fixed-width UTC ISO text.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from fal_flux_mcp.server._records import JobRecord, from_row, stored_time, utc_now

if TYPE_CHECKING:
    from fal_flux_mcp.server._journal import Row, Session

#: Jobs someone must follow (fal may still be working on them) or finish saving: the ones leases cover.
FOLLOWED_SQL = "(status IN ('queued', 'in_progress') OR pending_save)"


@dataclass(frozen=True, slots=True)
class Lease:
    """Which replica follows a job, and until when unless it renews (UTC)."""

    holder: str
    expires: datetime

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires < (now or utc_now())


class JournalLeases(ABC):
    """The lease methods of ``Journal`` (which provides the connection and the row order)."""

    _ORDER: str

    @abstractmethod
    def _session(self, *, write: bool = False, synced: bool = False) -> AbstractContextManager[Session]: ...

    @abstractmethod
    def read(self, sql: str, parameters: Sequence[Any] = ()) -> list[Row]: ...

    def claim(self, job_id: str, holder: str, seconds: float, *, now: datetime | None = None) -> bool:
        """Take (or keep) the lease on ``job_id`` for ``seconds``; False if another replica holds it.

        Also False for a job that needs no following (finished, nothing to save) or is not stored.
        Claiming a lease one already holds renews it.
        """
        with self._session(write=True) as session:
            return claim_in(session, job_id, holder, seconds, now or utc_now())

    def renew(self, holder: str, seconds: float, *, now: datetime | None = None) -> set[str]:
        """Extend every lease ``holder`` still holds by ``seconds`` from now; the ids of those jobs.

        A lease that another replica took over after it expired is not renewed and not returned:
        the caller stops following that job.
        """
        now = now or utc_now()
        with self._session(write=True) as session:
            session.run(
                f"UPDATE jobs SET lease_expires = ? WHERE lease_holder = ? AND {FOLLOWED_SQL}",
                (_until(now, seconds), holder),
            )
            rows = session.rows(
                f"SELECT job_id FROM jobs WHERE lease_holder = ? AND {FOLLOWED_SQL}", (holder,)
            )
        return {row["job_id"] for row in rows}

    def release(self, job_id: str, holder: str) -> bool:
        """Give up ``holder``'s lease on ``job_id`` (any replica may claim it at once); False if not held."""
        with self._session(write=True) as session:
            changed = session.run(
                "UPDATE jobs SET lease_holder = NULL, lease_expires = NULL WHERE job_id = ? AND lease_holder = ?",
                (job_id, holder),
            )
        return changed == 1

    def release_all(self, holder: str) -> int:
        """Give up every lease ``holder`` holds (a replica stopping cleanly); how many there were."""
        with self._session(write=True) as session:
            return session.run(
                "UPDATE jobs SET lease_holder = NULL, lease_expires = NULL WHERE lease_holder = ?", (holder,)
            )

    def lease(self, job_id: str) -> Lease | None:
        """Who follows ``job_id`` and until when; None if no replica holds its lease."""
        rows = self.read("SELECT lease_holder, lease_expires FROM jobs WHERE job_id = ?", (job_id,))
        if not rows or rows[0]["lease_holder"] is None:
            return None
        return Lease(rows[0]["lease_holder"], datetime.fromisoformat(rows[0]["lease_expires"]))

    def unfollowed(self, *, now: datetime | None = None) -> list[JobRecord]:
        """Jobs that need following whose lease no one holds or has expired, oldest first: to claim."""
        rows = self.read(
            f"SELECT * FROM jobs WHERE {FOLLOWED_SQL} AND (lease_holder IS NULL OR lease_expires < ?) "
            f"ORDER BY created_at, {self._ORDER}",
            (stored_time(now or utc_now()),),
        )
        return [from_row(row) for row in rows]


def claim_in(session: Session, job_id: str, holder: str, seconds: float, now: datetime) -> bool:
    """``Journal.claim`` inside a transaction already open (the job's first write takes its lease)."""
    changed = session.run(
        "UPDATE jobs SET lease_holder = ?, lease_expires = ? "
        f"WHERE job_id = ? AND {FOLLOWED_SQL} "
        "AND (lease_holder IS NULL OR lease_holder = ? OR lease_expires < ?)",
        (holder, _until(now, seconds), job_id, holder, stored_time(now)),
    )
    return changed == 1


def _until(now: datetime, seconds: float) -> str:
    return stored_time(now + timedelta(seconds=seconds))
