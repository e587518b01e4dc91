"""The job journal: every fal job fal-flux-mcp submits, kept in a database so none is ever lost.

A job is written here before the tool that submitted it returns. A client that gave up waiting, a server
restart or a crash therefore never loses a job the user paid for: ``check_status`` and the resources
find it again by id, and a finished result is built once and served from here afterwards.

Only what is needed to find and describe a job is stored (``_records``): fal's URLs, the arguments sent
(the user's own input), the money, and the outcome.

``Journal`` holds what the journal does, written once in SQL both dialects accept; a backend only opens
its connection, runs its migrations and gives transactions (``_journal_sqlite``: a file in the state
folder, the default; ``_journal_postgres``: one database shared by several servers). Statements are
written with ``?`` placeholders; a backend whose driver wants another style translates them itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self

from fal_flux_mcp.server._journal_leases import JournalLeases, Lease, claim_in
from fal_flux_mcp.server._records import (
    COLUMNS,
    IMMUTABLE_FIELDS,
    INTENT_COLUMNS,
    TERMINAL_STATUSES,
    Charge,
    IntentState,
    JobRecord,
    JobStatus,
    SubmitIntent,
    from_row,
    intent_from_row,
    intent_row,
    to_row,
    utc_now,
)

if TYPE_CHECKING:
    from fal_flux_mcp.settings import Settings

__all__ = [
    "Charge",
    "Check",
    "JobRecord",
    "JobStatus",
    "Journal",
    "JournalError",
    "Lease",
    "Session",
    "SubmitIntent",
    "open_journal",
]

#: A row read back: indexable by position and by column name, whatever the backend.
Row = Any

#: Finished jobs retention may forget: never one whose images are still to be saved.
PRUNABLE_SQL = "status IN ('completed', 'failed', 'cancelled') AND NOT pending_save AND created_at < ?"


class JournalError(Exception):
    """The journal cannot be used (e.g. written by a newer fal-flux-mcp, or its database unreachable)."""


class Session(Protocol):
    """Statements run inside one of the journal's transactions (``?`` placeholders)."""

    def rows(self, sql: str, parameters: Sequence[Any] = ()) -> list[Row]:
        """The rows a query returns."""
        ...

    def run(self, sql: str, parameters: Sequence[Any] = ()) -> int:
        """Run a statement; the number of rows it changed."""
        ...


#: A check run inside a write transaction; a reason to refuse, or None.
Check = Callable[[Session], "str | None"]


class Journal(JournalLeases, ABC):
    """The stored jobs, intents and pruned spend. Thread-safe; one instance per process is enough."""

    #: The column that orders rows stored in the same instant by when they were stored.
    _ORDER: str
    #: A job's ``created_at`` cut down to its quarter hour, in the same ISO form: every time zone's day
    #: starts on a quarter hour, so the ledger's local days and months still add up from these buckets.
    _BUCKET_SQL: str

    @abstractmethod
    def _session(self, *, write: bool = False, synced: bool = False) -> AbstractContextManager[Session]:
        """Exclusive use of the connection, in a transaction when ``write``.

        ``synced``: the commit must survive a power cut too, not only a killed process.
        """

    @abstractmethod
    def _lock_budgets(self, session: Session, owner: str) -> None:
        """Serialise the budget checks of ``owner`` across processes until this transaction ends."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection; the data stays for the next start."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def add(self, record: JobRecord) -> bool:
        """Store a newly submitted job; False (and nothing changed) if the job id is already stored.

        Idempotent so a retried submission path cannot duplicate or reset a job that is already known.
        """
        with self._session(write=True, synced=True) as session:
            return _insert_job(session, record) == 1

    def add_intent(self, intent: SubmitIntent, *, check: Check | None = None) -> str | None:
        """Record a submission (and so reserve its cost) before it is sent; durable when this returns.

        ``check`` runs inside the same write transaction, so that a budget check and the reservation
        are one step for every process sharing the journal: when it returns a reason, nothing is
        recorded and the reason is returned.
        """
        row = intent_row(intent)
        with self._session(write=True, synced=True) as session:
            self._lock_budgets(session, intent.owner)
            refusal = check(session) if check is not None else None
            if refusal is None:
                session.run(
                    f"INSERT INTO intents ({', '.join(INTENT_COLUMNS)}) "
                    f"VALUES ({', '.join('?' for _ in INTENT_COLUMNS)})",
                    [row[column] for column in INTENT_COLUMNS],
                )
        return refusal

    def read(self, sql: str, parameters: Sequence[Any] = ()) -> list[Row]:
        """Rows of a read-only query (the ledger's sums and lists), in SQL both backends accept."""
        with self._session() as session:
            return session.rows(sql, parameters)

    def fulfil_intent(
        self, intent_id: str, record: JobRecord, *, holder: str | None = None, lease_seconds: float = 0.0
    ) -> bool:
        """The intent became ``record``: store the job and drop the intent in one transaction.

        Not synced to disk one by one: should a power cut undo it, the intent is back, and is looked
        up in fal's request history at the next start like any other whose answer was lost.

        ``holder``: the replica that submitted the job takes its lease in the same transaction, so no
        other replica ever sees the new job unfollowed.

        False (and nothing changed) if the job is already stored, e.g. found twice by reconciliation.
        """
        with self._session(write=True) as session:
            added = _insert_job(session, record)
            session.run("DELETE FROM intents WHERE intent_id = ?", (intent_id,))
            if added and holder is not None:
                claim_in(session, record.job_id, holder, lease_seconds, utc_now())
        return added == 1

    def drop_intent(self, intent_id: str) -> None:
        """Forget an intent: fal surely has no job for it (refused, never sent, not in its history)."""
        with self._session(write=True, synced=True) as session:
            session.run("DELETE FROM intents WHERE intent_id = ?", (intent_id,))

    def update_intent(self, intent_id: str, *, state: IntentState, note: str | None) -> None:
        """Record what reconciliation found so far."""
        with self._session(write=True, synced=True) as session:
            session.run(
                "UPDATE intents SET state = ?, note = ? WHERE intent_id = ?", (state, note, intent_id)
            )

    def intents(self, owner: str | None = None) -> list[SubmitIntent]:
        """Submissions not yet known to be jobs, oldest first (only ``owner``'s when given)."""
        where, parameters = _owned(owner, "WHERE")
        rows = self.read(f"SELECT * FROM intents {where}ORDER BY created_at, {self._ORDER}", parameters)
        return [intent_from_row(row) for row in rows]

    def get(self, job_id: str, owner: str | None = None) -> JobRecord | None:
        """The job with fal request id ``job_id``, or None if this journal never saw it.

        ``owner``: None only where the server works for whoever owns the job (following, saving); a
        user's lookup passes the user, and another user's job is then None, as if it never existed.
        """
        where, parameters = _owned(owner, "AND")
        rows = self.read(f"SELECT * FROM jobs WHERE job_id = ? {where}", (job_id, *parameters))
        return from_row(rows[0]) if rows else None

    def update(self, job_id: str, /, **fields: Any) -> JobRecord:
        """Change some fields of a stored job and return the job as now stored.

        ``updated_at`` is bumped, and ``completed_at`` is set the first time the status becomes terminal.
        A terminal status is final: a later non-terminal status (a slow poll racing the one that saw the
        job finish) is ignored rather than making a finished job look pending again. Unknown or immutable
        fields and invalid values raise ``ValueError``; an unknown job raises ``KeyError``.
        """
        unknown = set(fields) - set(COLUMNS)
        if unknown:
            raise ValueError(f"JobRecord has no field(s) {', '.join(sorted(unknown))}")
        immutable = set(fields) & IMMUTABLE_FIELDS
        if immutable:
            raise ValueError(f"field(s) {', '.join(sorted(immutable))} cannot be updated")
        with self._session(write=True) as session:
            rows = session.rows(f"SELECT * FROM jobs WHERE job_id = ?{self._FOR_UPDATE}", (job_id,))
            if not rows:
                raise KeyError(job_id)
            current = from_row(rows[0])
            changes = dict(fields)
            if current.is_terminal and changes.get("status", current.status) not in TERMINAL_STATUSES:
                del changes["status"]
            now = utc_now()
            changes["updated_at"] = max(now, current.updated_at)
            new_status = changes.get("status", current.status)
            if new_status in TERMINAL_STATUSES and current.completed_at is None:
                changes.setdefault("completed_at", now)
            merged = current.model_dump()
            merged.update(changes)
            updated = JobRecord.model_validate(merged)
            new_row = to_row(updated)
            assignments = ", ".join(f"{column} = ?" for column in changes)
            if updated.is_terminal and not updated.pending_save:  # nothing left to follow: free its lease
                assignments += ", lease_holder = NULL, lease_expires = NULL"
            session.run(
                f"UPDATE jobs SET {assignments} WHERE job_id = ?",
                [*(new_row[column] for column in changes), job_id],
            )
        return updated

    #: Locks the row read for an update until the transaction ends, where the backend needs it.
    _FOR_UPDATE = ""

    def prune(self, before: str) -> int:
        """Forget finished jobs created before ``before`` (ISO, UTC); returns how many.

        What they cost is added to the ``spend`` table first, in the same transaction, so budgets and
        spend reports still count it. Unfinished jobs and images still to save are never pruned.
        """
        with self._session(write=True) as session:
            session.run(
                f"INSERT INTO spend (owner, bucket, endpoint_id, charge, cost_usd, jobs) "
                f"SELECT owner, {self._BUCKET_SQL}, endpoint_id, charge, COALESCE(SUM(cost_usd), 0), COUNT(*) "
                f"FROM jobs WHERE {PRUNABLE_SQL} GROUP BY 1, 2, 3, 4 "
                "ON CONFLICT (owner, bucket, endpoint_id, charge) DO UPDATE SET "
                "cost_usd = spend.cost_usd + excluded.cost_usd, jobs = spend.jobs + excluded.jobs",
                (before,),
            )
            return session.run(f"DELETE FROM jobs WHERE {PRUNABLE_SQL}", (before,))

    def recent(self, limit: int = 20, owner: str | None = None) -> list[JobRecord]:
        """The ``limit`` most recently submitted jobs, newest first (only ``owner``'s when given)."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        where, parameters = _owned(owner, "WHERE")
        rows = self.read(
            f"SELECT * FROM jobs {where}ORDER BY created_at DESC, {self._ORDER} DESC LIMIT ?",
            (*parameters, limit),
        )
        return [from_row(row) for row in rows]

    def recently_completed(self, limit: int, owner: str | None = None) -> list[str]:
        """The ids of the ``limit`` most recently completed jobs, newest first (only ``owner``'s when given)."""
        where, parameters = _owned(owner, "AND")
        rows = self.read(
            f"SELECT job_id FROM jobs WHERE status = 'completed' {where}ORDER BY completed_at DESC, "
            f"{self._ORDER} DESC LIMIT ?",
            (*parameters, limit),
        )
        return [row["job_id"] for row in rows]

    def unfinished(self) -> list[JobRecord]:
        """Jobs fal may still be working on, oldest first (which replica follows each: ``unfollowed``, ``lease``)."""
        rows = self.read(
            f"SELECT * FROM jobs WHERE status IN ('queued', 'in_progress') ORDER BY created_at, {self._ORDER}"
        )
        return [from_row(row) for row in rows]

    # ------------------------------------------------------------------- users' own fal keys (sealed)

    def sealed_key(self, owner: str) -> str | None:
        """The sealed fal key ``owner`` stored (see ``_user_keys``), or None."""
        rows = self.read("SELECT sealed FROM user_keys WHERE owner = ?", (owner,))
        return str(rows[0]["sealed"]) if rows else None

    def store_sealed_key(self, owner: str, sealed: str) -> None:
        """Store (or replace) ``owner``'s sealed fal key."""
        with self._session(write=True, synced=True) as session:
            session.run(
                "INSERT INTO user_keys (owner, sealed, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (owner) DO UPDATE SET sealed = excluded.sealed, updated_at = excluded.updated_at",
                (owner, sealed, utc_now().isoformat()),
            )

    def delete_sealed_key(self, owner: str) -> bool:
        """Forget ``owner``'s fal key; whether there was one."""
        with self._session(write=True, synced=True) as session:
            return session.run("DELETE FROM user_keys WHERE owner = ?", (owner,)) > 0


def _owned(owner: str | None, keyword: str) -> tuple[str, tuple[str, ...]]:
    """The condition (after ``keyword``) that keeps only ``owner``'s rows, and its parameter; none for None."""
    return ("", ()) if owner is None else (f"{keyword} owner = ? ", (owner,))


def _insert_job(session: Session, record: JobRecord) -> int:
    """Store ``record`` unless its id is stored already; 1 if it was stored."""
    row = to_row(record)
    return session.run(
        f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)}) "
        "ON CONFLICT (job_id) DO NOTHING",
        [row[column] for column in COLUMNS],
    )


def open_journal(settings: Settings) -> Journal:
    """The journal the settings name: PostgreSQL for ``FLUX_MCP_DATABASE_URL``, else SQLite in the state folder."""
    if settings.database_url is not None:
        from fal_flux_mcp.server._journal_postgres import PostgresJournal

        return PostgresJournal(settings.database_url.get_secret_value())
    from fal_flux_mcp.server._journal_sqlite import SqliteJournal

    return SqliteJournal(settings.state_dir / "jobs.sqlite3")
