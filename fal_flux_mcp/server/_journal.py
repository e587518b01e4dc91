"""The job journal: every fal job fal-flux-mcp submits, kept on disk so none is ever lost.

A job is written here before the tool that submitted it returns. A client that gave up waiting, a server
restart or a crash therefore never loses a job the user paid for: ``check_status`` and the resources
find it again by id, and a finished result is built once and served from here afterwards.

Only what is needed to find and describe a job is stored (``_records``): fal's URLs, the arguments sent
(the user's own input), the money, and the outcome.

One SQLite connection is shared behind a lock, so the journal can be used from the event loop and from
worker threads alike. Writes that record money or a job's existence (intents, new jobs) are synced to
disk before they return, so they survive a power cut; the rest (status changes, results) survive a
killed process but are not synced one by one: losing the last of them to a power cut only means the job
is followed and saved again at the next start. That keeps every call well under a millisecond, so
async code may call them directly.
WAL and a busy timeout also let two fal-flux-mcp processes (e.g. two clients on one machine) share the file.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from fal_flux_mcp.server._records import (
    COLUMNS,
    IMMUTABLE_FIELDS,
    INTENT_COLUMNS,
    STATUSES,
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

__all__ = [
    "SCHEMA_VERSION",
    "Charge",
    "Check",
    "JobRecord",
    "JobStatus",
    "Journal",
    "JournalError",
    "SubmitIntent",
]

#: ``PRAGMA user_version`` of the schema this code writes; bump it and add a migration to change it.
SCHEMA_VERSION = 6

#: A check run inside a write transaction; a reason to refuse, or None.
Check = Callable[[sqlite3.Connection], "str | None"]

_LEDGER_MIGRATION: tuple[str, ...] = (
    "ALTER TABLE jobs ADD COLUMN charge TEXT NOT NULL DEFAULT 'reserved'",
    "ALTER TABLE jobs ADD COLUMN unit_price REAL",
    "ALTER TABLE jobs ADD COLUMN price_source TEXT",
    "ALTER TABLE jobs ADD COLUMN approval TEXT",
    "UPDATE jobs SET charge = CASE status WHEN 'completed' THEN 'final' WHEN 'cancelled' THEN 'released' "
    "WHEN 'failed' THEN 'possibly_charged' ELSE 'reserved' END",
    "ALTER TABLE intents ADD COLUMN unit_price REAL",
    "ALTER TABLE intents ADD COLUMN price_source TEXT",
    "ALTER TABLE intents ADD COLUMN approval TEXT",
)

_SCHEMA: tuple[str, ...] = (
    f"""CREATE TABLE IF NOT EXISTS jobs (
        job_id          TEXT PRIMARY KEY,
        endpoint_id     TEXT NOT NULL,
        status_url      TEXT NOT NULL,
        response_url    TEXT NOT NULL,
        cancel_url      TEXT NOT NULL,
        arguments       TEXT NOT NULL,
        prompt          TEXT NOT NULL,
        status          TEXT NOT NULL CHECK (status IN ({", ".join(f"'{s}'" for s in STATUSES)})),
        queue_position  INTEGER,
        cost_usd        REAL,
        webhook_url     TEXT,
        error           TEXT,
        result          TEXT,
        created_at      TEXT NOT NULL,
        updated_at      TEXT NOT NULL,
        completed_at    TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created_at)",
    "CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status)",
)


_SPEND_TABLE = """CREATE TABLE spend (
    bucket       TEXT NOT NULL,
    endpoint_id  TEXT NOT NULL,
    charge       TEXT NOT NULL,
    cost_usd     REAL NOT NULL,
    jobs         INTEGER NOT NULL,
    PRIMARY KEY (bucket, endpoint_id, charge)
)"""
#: A job's ``created_at`` cut down to its quarter hour, in the same ISO form: every time zone's day
#: starts on a quarter hour, so the ledger's local days and months still add up from these buckets.
_BUCKET_SQL = (
    "substr(created_at, 1, 14) || printf('%02d', CAST(substr(created_at, 15, 2) AS INTEGER) / 15 * 15) "
    "|| ':00.000000+00:00'"
)
_PRUNABLE_SQL = "status IN ('completed', 'failed', 'cancelled') AND NOT pending_save AND created_at < ?"


class JournalError(Exception):
    """The journal file cannot be used (e.g. written by a newer fal-flux-mcp)."""


class Journal:
    """The SQLite file of submitted jobs. Thread-safe; one instance per process is enough."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10.0)
        try:
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL, in WAL mode: a commit survives the process being killed, without an fsync each.
            # Writes that must also survive a power cut switch to FULL (``_synced``).
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    def _migrate(self) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                version = self._db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise JournalError(
                        f"the job journal {self.path} was written by a newer fal-flux-mcp (schema {version}, "
                        f"this version knows {SCHEMA_VERSION}); upgrade fal-flux-mcp or set FLUX_MCP_STATE_DIR "
                        "to another folder"
                    )
                if version < 1:
                    for statement in _SCHEMA:
                        self._db.execute(statement)
                if version < 2:  # saves that failed are retried: find those jobs without reading all
                    self._db.execute("ALTER TABLE jobs ADD COLUMN pending_save INTEGER NOT NULL DEFAULT 0")
                    self._db.execute(
                        "CREATE INDEX jobs_pending_save ON jobs (pending_save) WHERE pending_save"
                    )
                if version < 3:  # submissions are recorded before they are sent (see SubmitIntent)
                    self._db.execute(
                        """CREATE TABLE intents (
                            intent_id    TEXT PRIMARY KEY,
                            endpoint_id  TEXT NOT NULL,
                            arguments    TEXT NOT NULL,
                            prompt       TEXT NOT NULL,
                            cost_usd     REAL,
                            webhook_url  TEXT,
                            created_at   TEXT NOT NULL,
                            state        TEXT NOT NULL CHECK (state IN ('pending', 'unconfirmed')),
                            note         TEXT
                        )"""
                    )
                if version < 4:  # the ledger: what each job reserved, then cost, and who allowed it
                    for statement in _LEDGER_MIGRATION:
                        self._db.execute(statement)
                if version < 5:  # models that bill the input images' megapixels too (FLUX.2 edits)
                    for table in ("jobs", "intents"):
                        self._db.execute(
                            f"ALTER TABLE {table} ADD COLUMN input_megapixels INTEGER NOT NULL DEFAULT 0"
                        )
                if version < 6:  # retention: what pruned jobs spent, by quarter hour, for the ledger
                    self._db.execute(_SPEND_TABLE)
                # Further migrations: `if version < 7: ...` here.
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        """Close the connection; the file stays for the next start."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextmanager
    def _synced(self) -> Iterator[None]:
        """Make the commits inside (called with the lock held) durable through a power cut too."""
        self._db.execute("PRAGMA synchronous=FULL")
        try:
            yield
        finally:
            self._db.execute("PRAGMA synchronous=NORMAL")

    def add(self, record: JobRecord) -> bool:
        """Store a newly submitted job; False (and nothing changed) if the job id is already stored.

        Idempotent so a retried submission path cannot duplicate or reset a job that is already known.
        """
        row = to_row(record)
        placeholders = ", ".join("?" for _ in COLUMNS)
        with self._lock, self._synced():
            cursor = self._db.execute(
                f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES ({placeholders}) "
                "ON CONFLICT (job_id) DO NOTHING",
                [row[column] for column in COLUMNS],
            )
            return cursor.rowcount == 1

    def add_intent(self, intent: SubmitIntent, *, check: Check | None = None) -> str | None:
        """Record a submission (and so reserve its cost) before it is sent; durable when this returns.

        ``check`` runs inside the same write transaction, so that a budget check and the reservation
        are one step for every process sharing the file: when it returns a reason, nothing is
        recorded and the reason is returned.
        """
        row = intent_row(intent)
        with self._lock, self._synced():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                refusal = check(self._db) if check is not None else None
                if refusal is None:
                    self._db.execute(
                        f"INSERT INTO intents ({', '.join(INTENT_COLUMNS)}) "
                        f"VALUES ({', '.join('?' for _ in INTENT_COLUMNS)})",
                        [row[column] for column in INTENT_COLUMNS],
                    )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("ROLLBACK" if refusal is not None else "COMMIT")
        return refusal

    def read(self, sql: str, parameters: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Rows of a read-only query (the ledger's sums and lists)."""
        with self._lock:
            return self._db.execute(sql, parameters).fetchall()

    def fulfil_intent(self, intent_id: str, record: JobRecord) -> bool:
        """The intent became ``record``: store the job and drop the intent in one transaction.

        Not synced to disk one by one: should a power cut undo it, the intent is back, and is looked
        up in fal's request history at the next start like any other whose answer was lost.

        False (and nothing changed) if the job is already stored, e.g. found twice by reconciliation.
        """
        row = to_row(record)
        with self._lock:  # not synced: the intent it replaces was, and finds the job again
            self._db.execute("BEGIN IMMEDIATE")
            try:
                added = self._db.execute(
                    f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)}) "
                    "ON CONFLICT (job_id) DO NOTHING",
                    [row[column] for column in COLUMNS],
                ).rowcount
                self._db.execute("DELETE FROM intents WHERE intent_id = ?", (intent_id,))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return added == 1

    def drop_intent(self, intent_id: str) -> None:
        """Forget an intent: fal surely has no job for it (refused, never sent, not in its history)."""
        with self._lock, self._synced():
            self._db.execute("DELETE FROM intents WHERE intent_id = ?", (intent_id,))

    def update_intent(self, intent_id: str, *, state: IntentState, note: str | None) -> None:
        """Record what reconciliation found so far."""
        with self._lock, self._synced():
            self._db.execute(
                "UPDATE intents SET state = ?, note = ? WHERE intent_id = ?", (state, note, intent_id)
            )

    def intents(self) -> list[SubmitIntent]:
        """Submissions not yet known to be jobs, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM intents ORDER BY created_at, rowid").fetchall()
        return [intent_from_row(row) for row in rows]

    def get(self, job_id: str) -> JobRecord | None:
        """The job with fal request id ``job_id``, or None if this journal never saw it."""
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else from_row(row)

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
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
                if row is None:
                    raise KeyError(job_id)
                current = from_row(row)
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
                self._db.execute(
                    f"UPDATE jobs SET {assignments} WHERE job_id = ?",
                    [*(new_row[column] for column in changes), job_id],
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return updated

    def prune(self, before: str) -> int:
        """Forget finished jobs created before ``before`` (ISO, UTC); returns how many.

        What they cost is added to the ``spend`` table first, in the same transaction, so budgets and
        spend reports still count it. Unfinished jobs and images still to save are never pruned.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    f"INSERT INTO spend (bucket, endpoint_id, charge, cost_usd, jobs) "
                    f"SELECT {_BUCKET_SQL}, endpoint_id, charge, COALESCE(SUM(cost_usd), 0), COUNT(*) "
                    f"FROM jobs WHERE {_PRUNABLE_SQL} GROUP BY 1, 2, 3 "
                    "ON CONFLICT (bucket, endpoint_id, charge) DO UPDATE SET "
                    "cost_usd = cost_usd + excluded.cost_usd, jobs = jobs + excluded.jobs",
                    (before,),
                )
                pruned = self._db.execute(f"DELETE FROM jobs WHERE {_PRUNABLE_SQL}", (before,)).rowcount
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return pruned

    def recent(self, limit: int = 20) -> list[JobRecord]:
        """The ``limit`` most recently submitted jobs, newest first."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs ORDER BY created_at DESC, rowid DESC LIMIT ?", (limit,)
            ).fetchall()
        return [from_row(row) for row in rows]

    def unfinished(self) -> list[JobRecord]:
        """Jobs fal may still be working on, oldest first: the ones to check on after a restart."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE status IN ('queued', 'in_progress') ORDER BY created_at, rowid"
            ).fetchall()
        return [from_row(row) for row in rows]

    def pending_saves(self) -> list[JobRecord]:
        """Completed jobs with an image still to save, oldest first: retried after a restart."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE pending_save ORDER BY created_at, rowid"
            ).fetchall()
        return [from_row(row) for row in rows]
