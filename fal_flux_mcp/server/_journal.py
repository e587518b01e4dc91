"""The job journal: every fal job fal-flux-mcp submits, kept on disk so none is ever lost.

A job is written here before the tool that submitted it returns. A client that gave up waiting, a server
restart or a crash therefore never loses a job the user paid for: ``check_status`` and the resources
find it again by id, and a finished result is built once and served from here afterwards.

Only what is needed to find and describe a job is stored: fal's URLs, the arguments sent (the user's own
input) and the outcome. ``JobRecord`` has no field for keys or headers and rejects unknown fields, and the
table has exactly one column per field, so a secret has nowhere to go.

One SQLite connection is shared behind a lock, so the journal can be used from the event loop and from
worker threads alike; calls take well under a millisecond with WAL, so async code may call them directly.
WAL and a busy timeout also let two fal-flux-mcp processes (e.g. two clients on one machine) share the file.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, get_args

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, JsonValue, field_validator

JobStatus = Literal["queued", "in_progress", "completed", "failed", "cancelled"]
Charge = Literal["reserved", "final", "released", "possibly_charged"]

#: Statuses a job never leaves: fal has nothing more to say about it.
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})

#: ``PRAGMA user_version`` of the schema this code writes; bump it and add a migration to change it.
SCHEMA_VERSION = 4

_STATUSES: tuple[str, ...] = get_args(JobStatus)
_JSON_FIELDS = frozenset({"arguments", "result"})
_TIME_FIELDS = frozenset({"created_at", "updated_at", "completed_at"})
_IMMUTABLE_FIELDS = frozenset({"job_id", "created_at", "updated_at"})


def _now() -> datetime:
    return datetime.now(UTC)


class JobRecord(BaseModel):
    """One submitted fal job, as the journal stores it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str = Field(min_length=1, description="fal's request id.")
    endpoint_id: str = Field(min_length=1)
    status_url: str
    response_url: str
    cancel_url: str
    arguments: dict[str, JsonValue] = Field(description="The fal input exactly as sent.")
    prompt: str = ""
    status: JobStatus = "queued"
    queue_position: int | None = None
    cost_usd: float | None = None
    webhook_url: str | None = None
    error: str | None = None
    result: dict[str, JsonValue] | None = Field(
        default=None, description="The finished tool result as JSON, built once and served again."
    )
    created_at: AwareDatetime = Field(default_factory=_now)
    updated_at: AwareDatetime = Field(default_factory=_now)
    completed_at: AwareDatetime | None = None
    pending_save: bool = Field(
        default=False, description="A completed job with an image not saved yet: saving is retried."
    )
    charge: Charge = Field(
        default="reserved",
        description="What cost_usd is: the estimate reserved before submit, the final cost, released "
        "(fal never ran it, or never charges the failure) or possibly charged (fal may bill it).",
    )
    unit_price: float | None = Field(default=None, description="USD per unit when it was submitted.")
    price_source: str | None = Field(default=None, description="Where unit_price came from.")
    approval: str | None = Field(default=None, description="How spending on it was allowed.")

    @field_validator("created_at", "updated_at", "completed_at")
    @classmethod
    def _to_utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else value.astimezone(UTC)

    @property
    def is_terminal(self) -> bool:
        """Whether fal is done with this job (completed, failed or cancelled)."""
        return self.status in TERMINAL_STATUSES


_COLUMNS: tuple[str, ...] = tuple(JobRecord.model_fields)

IntentState = Literal["pending", "unconfirmed"]


class SubmitIntent(BaseModel):
    """A submission about to be sent to fal, recorded first so that a crash cannot lose the job.

    It becomes a ``JobRecord`` when fal answers. One left over (a crash between fal's answer and the
    journal write, an answer lost on the way) is looked up in fal's request history by its input.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    intent_id: str = Field(min_length=1)
    endpoint_id: str = Field(min_length=1)
    arguments: dict[str, JsonValue] = Field(description="The fal input exactly as sent.")
    prompt: str = ""
    cost_usd: float | None = None
    webhook_url: str | None = None
    created_at: AwareDatetime = Field(default_factory=_now)
    state: IntentState = Field(
        default="pending",
        description="pending: being reconciled; unconfirmed: fal's history cannot be read with this key.",
    )
    note: str | None = Field(default=None, description="What reconciliation found so far.")
    unit_price: float | None = None
    price_source: str | None = None
    approval: str | None = None

    @field_validator("created_at")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)


_INTENT_COLUMNS: tuple[str, ...] = tuple(SubmitIntent.model_fields)

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
        status          TEXT NOT NULL CHECK (status IN ({", ".join(f"'{s}'" for s in _STATUSES)})),
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
            # FULL: a committed intent or job survives a power cut too, not only a killed process.
            self._db.execute("PRAGMA synchronous=FULL")
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
                # Further migrations: `if version < 5: ...` here.
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

    def add(self, record: JobRecord) -> bool:
        """Store a newly submitted job; False (and nothing changed) if the job id is already stored.

        Idempotent so a retried submission path cannot duplicate or reset a job that is already known.
        """
        row = _to_row(record)
        placeholders = ", ".join("?" for _ in _COLUMNS)
        with self._lock:
            cursor = self._db.execute(
                f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({placeholders}) "
                "ON CONFLICT (job_id) DO NOTHING",
                [row[column] for column in _COLUMNS],
            )
            return cursor.rowcount == 1

    def add_intent(self, intent: SubmitIntent, *, check: Check | None = None) -> str | None:
        """Record a submission (and so reserve its cost) before it is sent; durable when this returns.

        ``check`` runs inside the same write transaction, so that a budget check and the reservation
        are one step for every process sharing the file: when it returns a reason, nothing is
        recorded and the reason is returned.
        """
        row = _intent_row(intent)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                refusal = check(self._db) if check is not None else None
                if refusal is None:
                    self._db.execute(
                        f"INSERT INTO intents ({', '.join(_INTENT_COLUMNS)}) "
                        f"VALUES ({', '.join('?' for _ in _INTENT_COLUMNS)})",
                        [row[column] for column in _INTENT_COLUMNS],
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

        False (and nothing changed) if the job is already stored, e.g. found twice by reconciliation.
        """
        row = _to_row(record)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                added = self._db.execute(
                    f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)}) "
                    "ON CONFLICT (job_id) DO NOTHING",
                    [row[column] for column in _COLUMNS],
                ).rowcount
                self._db.execute("DELETE FROM intents WHERE intent_id = ?", (intent_id,))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return added == 1

    def drop_intent(self, intent_id: str) -> None:
        """Forget an intent: fal surely has no job for it (refused, never sent, not in its history)."""
        with self._lock:
            self._db.execute("DELETE FROM intents WHERE intent_id = ?", (intent_id,))

    def update_intent(self, intent_id: str, *, state: IntentState, note: str | None) -> None:
        """Record what reconciliation found so far."""
        with self._lock:
            self._db.execute(
                "UPDATE intents SET state = ?, note = ? WHERE intent_id = ?", (state, note, intent_id)
            )

    def intents(self) -> list[SubmitIntent]:
        """Submissions not yet known to be jobs, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM intents ORDER BY created_at, rowid").fetchall()
        return [_intent_from_row(row) for row in rows]

    def get(self, job_id: str) -> JobRecord | None:
        """The job with fal request id ``job_id``, or None if this journal never saw it."""
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else _from_row(row)

    def update(self, job_id: str, /, **fields: Any) -> JobRecord:
        """Change some fields of a stored job and return the job as now stored.

        ``updated_at`` is bumped, and ``completed_at`` is set the first time the status becomes terminal.
        A terminal status is final: a later non-terminal status (a slow poll racing the one that saw the
        job finish) is ignored rather than making a finished job look pending again. Unknown or immutable
        fields and invalid values raise ``ValueError``; an unknown job raises ``KeyError``.
        """
        unknown = set(fields) - set(_COLUMNS)
        if unknown:
            raise ValueError(f"JobRecord has no field(s) {', '.join(sorted(unknown))}")
        immutable = set(fields) & _IMMUTABLE_FIELDS
        if immutable:
            raise ValueError(f"field(s) {', '.join(sorted(immutable))} cannot be updated")
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
                if row is None:
                    raise KeyError(job_id)
                current = _from_row(row)
                changes = dict(fields)
                if current.is_terminal and changes.get("status", current.status) not in TERMINAL_STATUSES:
                    del changes["status"]
                now = _now()
                changes["updated_at"] = max(now, current.updated_at)
                new_status = changes.get("status", current.status)
                if new_status in TERMINAL_STATUSES and current.completed_at is None:
                    changes.setdefault("completed_at", now)
                merged = current.model_dump()
                merged.update(changes)
                updated = JobRecord.model_validate(merged)
                new_row = _to_row(updated)
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

    def recent(self, limit: int = 20) -> list[JobRecord]:
        """The ``limit`` most recently submitted jobs, newest first."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs ORDER BY created_at DESC, rowid DESC LIMIT ?", (limit,)
            ).fetchall()
        return [_from_row(row) for row in rows]

    def unfinished(self) -> list[JobRecord]:
        """Jobs fal may still be working on, oldest first: the ones to check on after a restart."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE status IN ('queued', 'in_progress') ORDER BY created_at, rowid"
            ).fetchall()
        return [_from_row(row) for row in rows]

    def pending_saves(self) -> list[JobRecord]:
        """Completed jobs with an image still to save, oldest first: retried after a restart."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE pending_save ORDER BY created_at, rowid"
            ).fetchall()
        return [_from_row(row) for row in rows]


def _to_row(record: JobRecord) -> dict[str, Any]:
    row: dict[str, Any] = record.model_dump()
    for name in _JSON_FIELDS:
        if row[name] is not None:
            row[name] = json.dumps(row[name], ensure_ascii=False, separators=(",", ":"))
    for name in _TIME_FIELDS:
        if row[name] is not None:
            # Fixed-width UTC ISO text, so SQL's text ordering is time ordering.
            row[name] = row[name].astimezone(UTC).isoformat(timespec="microseconds")
    return row


def _intent_row(intent: SubmitIntent) -> dict[str, Any]:
    row: dict[str, Any] = intent.model_dump()
    row["arguments"] = json.dumps(row["arguments"], ensure_ascii=False, separators=(",", ":"))
    row["created_at"] = intent.created_at.isoformat(timespec="microseconds")
    return row


def _intent_from_row(row: sqlite3.Row) -> SubmitIntent:
    values: dict[str, Any] = {name: row[name] for name in _INTENT_COLUMNS}
    values["arguments"] = json.loads(values["arguments"])
    values["created_at"] = datetime.fromisoformat(values["created_at"])
    return SubmitIntent.model_validate(values)


def _from_row(row: sqlite3.Row) -> JobRecord:
    values: dict[str, Any] = {name: row[name] for name in _COLUMNS}
    for name in _JSON_FIELDS:
        if values[name] is not None:
            values[name] = json.loads(values[name])
    for name in _TIME_FIELDS:
        if values[name] is not None:
            values[name] = datetime.fromisoformat(values[name])
    return JobRecord.model_validate(values)
