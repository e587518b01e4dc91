"""The journal in one SQLite file in the state folder: the embedded default, for one user's machine.

One connection is shared behind a lock, so the journal can be used from the event loop and from worker
threads alike. Writes that record money or a job's existence (intents, new jobs) are synced to disk
before they return, so they survive a power cut; the rest (status changes, results) survive a killed
process but are not synced one by one: losing the last of them to a power cut only means the job is
followed and saved again at the next start. That keeps every call well under a millisecond, so async
code may call them directly. WAL and a busy timeout also let two fal-flux-mcp processes (e.g. two
clients on one machine) share the file; ``BEGIN IMMEDIATE`` makes their write transactions take turns.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fal_flux_mcp.server._journal import Journal, JournalError, Row, Session
from fal_flux_mcp.server._records import STATUSES

#: ``PRAGMA user_version`` of the schema this code writes; bump it and add a migration to change it.
SCHEMA_VERSION = 7

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

_INTENTS_TABLE = """CREATE TABLE intents (
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

_SPEND_TABLE = """CREATE TABLE spend (
    bucket       TEXT NOT NULL,
    endpoint_id  TEXT NOT NULL,
    charge       TEXT NOT NULL,
    cost_usd     REAL NOT NULL,
    jobs         INTEGER NOT NULL,
    PRIMARY KEY (bucket, endpoint_id, charge)
)"""


#: Every job, intent and pruned sum belongs to a user; one replica at a time follows an unfinished job
#: (``lease_holder`` until ``lease_expires``); users may keep their own fal key (sealed, see ``user_keys``).
TEAM_MIGRATION: tuple[str, ...] = (
    "ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT 'local'",
    "ALTER TABLE jobs ADD COLUMN lease_holder TEXT",
    "ALTER TABLE jobs ADD COLUMN lease_expires TEXT",
    "CREATE INDEX jobs_by_owner ON jobs (owner, created_at)",
    "ALTER TABLE intents ADD COLUMN owner TEXT NOT NULL DEFAULT 'local'",
    """CREATE TABLE spend_by_owner (
        owner        TEXT NOT NULL DEFAULT 'local',
        bucket       TEXT NOT NULL,
        endpoint_id  TEXT NOT NULL,
        charge       TEXT NOT NULL,
        cost_usd     REAL NOT NULL,
        jobs         INTEGER NOT NULL,
        PRIMARY KEY (owner, bucket, endpoint_id, charge)
    )""",
    "INSERT INTO spend_by_owner (bucket, endpoint_id, charge, cost_usd, jobs) "
    "SELECT bucket, endpoint_id, charge, cost_usd, jobs FROM spend",
    "DROP TABLE spend",
    "ALTER TABLE spend_by_owner RENAME TO spend",
    """CREATE TABLE user_keys (
        owner       TEXT PRIMARY KEY,
        sealed      TEXT NOT NULL,
        updated_at  TEXT NOT NULL
    )""",
)


class _Session:
    """Statements on the shared connection, which the caller holds the lock of."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def rows(self, sql: str, parameters: Sequence[Any] = ()) -> list[Row]:
        return self._db.execute(sql, parameters).fetchall()

    def run(self, sql: str, parameters: Sequence[Any] = ()) -> int:
        return self._db.execute(sql, parameters).rowcount


class SqliteJournal(Journal):
    """The SQLite file of submitted jobs."""

    _ORDER = "rowid"
    _BUCKET_SQL = (
        "substr(created_at, 1, 14) || printf('%02d', CAST(substr(created_at, 15, 2) AS INTEGER) / 15 * 15) "
        "|| ':00.000000+00:00'"
    )

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10.0)
        try:
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL, in WAL mode: a commit survives the process being killed, without an fsync each.
            # Writes that must also survive a power cut switch to FULL (``synced``).
            self._db.execute("PRAGMA synchronous=NORMAL")
            with self._session(write=True) as session:
                self._migrate(session)
        except BaseException:
            self._db.close()
            raise

    def _migrate(self, session: _Session) -> None:
        version = session.rows("PRAGMA user_version")[0][0]
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"the job journal {self.path} was written by a newer fal-flux-mcp (schema {version}, "
                f"this version knows {SCHEMA_VERSION}); upgrade fal-flux-mcp or set FLUX_MCP_STATE_DIR "
                "to another folder"
            )
        if version < 1:
            for statement in _SCHEMA:
                session.run(statement)
        if version < 2:  # saves that failed are retried: find those jobs without reading all
            session.run("ALTER TABLE jobs ADD COLUMN pending_save INTEGER NOT NULL DEFAULT 0")
            session.run("CREATE INDEX jobs_pending_save ON jobs (pending_save) WHERE pending_save")
        if version < 3:  # submissions are recorded before they are sent (see SubmitIntent)
            session.run(_INTENTS_TABLE)
        if version < 4:  # the ledger: what each job reserved, then cost, and who allowed it
            for statement in _LEDGER_MIGRATION:
                session.run(statement)
        if version < 5:  # models that bill the input images' megapixels too (FLUX.2 edits)
            for table in ("jobs", "intents"):
                session.run(f"ALTER TABLE {table} ADD COLUMN input_megapixels INTEGER NOT NULL DEFAULT 0")
        if version < 6:  # retention: what pruned jobs spent, by quarter hour, for the ledger
            session.run(_SPEND_TABLE)
        if version < 7:  # a team's server: owners, leases on following a job, users' own fal keys
            for statement in TEAM_MIGRATION:
                session.run(statement)
        # Further migrations: `if version < 8: ...` here.
        session.run(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _session(self, *, write: bool = False, synced: bool = False) -> Iterator[_Session]:
        with self._lock:
            if synced:
                self._db.execute("PRAGMA synchronous=FULL")
            try:
                if not write:
                    yield _Session(self._db)
                    return
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield _Session(self._db)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            finally:
                if synced:
                    self._db.execute("PRAGMA synchronous=NORMAL")

    def _lock_budgets(self, session: Session, owner: str) -> None:
        """Nothing more to do: ``BEGIN IMMEDIATE`` already made every other writer wait."""
        del session, owner

    def close(self) -> None:
        """Close the connection; the file stays for the next start."""
        with self._lock:
            self._db.close()
