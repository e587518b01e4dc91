"""The journal in a PostgreSQL database, shared by every server of a team (``FLUX_MCP_DATABASE_URL``).

The same logical schema as the SQLite file (times as fixed-width UTC text, JSON as text), so the
statements in ``Journal`` and the ledger's queries run unchanged; this module only translates the
``?`` placeholders to the driver's and adds what a database shared by several processes needs:

- versioned migrations, recorded in ``schema_version`` and applied under an advisory lock, so that two
  servers starting together do not both migrate;
- budget checks serialised across processes by a transaction-level advisory lock taken before the check
  (``_lock_budgets``), so the check and the reservation are one step for every server;
- a job row locked (``FOR UPDATE``) while an update merges into it.

One synchronous connection is shared behind a lock, like the SQLite backend's; when the database drops
it (a restart, a failover), reads and transactions not yet begun are served on a new one.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from functools import lru_cache
from typing import Any

import psycopg
from psycopg.rows import RowMaker

from fal_flux_mcp.server._journal import Journal, JournalError, Row, Session
from fal_flux_mcp.server._records import STATUSES

#: Advisory lock keys (any two fixed numbers; they only need to be the same in every server).
_MIGRATION_LOCK = 0x666C7578_01
_BUDGET_LOCK = 0x666C7578_02


def _budget_lock(owner: str) -> int:
    """The advisory lock key of ``owner``'s budgets: the same in every server, as a signed 64-bit number."""
    digest = hashlib.sha256(f"{_BUDGET_LOCK}:{owner}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


#: The migrations, in order: version N is ``_MIGRATIONS[N - 1]``. Append, never edit one released.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        f"""CREATE TABLE jobs (
            job_id            TEXT PRIMARY KEY,
            endpoint_id       TEXT NOT NULL,
            status_url        TEXT NOT NULL,
            response_url      TEXT NOT NULL,
            cancel_url        TEXT NOT NULL,
            arguments         TEXT NOT NULL,
            prompt            TEXT NOT NULL,
            status            TEXT NOT NULL CHECK (status IN ({", ".join(f"'{s}'" for s in STATUSES)})),
            queue_position    INTEGER,
            cost_usd          DOUBLE PRECISION,
            webhook_url       TEXT,
            error             TEXT,
            result            TEXT,
            created_at        TEXT NOT NULL,
            updated_at        TEXT NOT NULL,
            completed_at      TEXT,
            pending_save      BOOLEAN NOT NULL DEFAULT FALSE,
            charge            TEXT NOT NULL DEFAULT 'reserved',
            unit_price        DOUBLE PRECISION,
            price_source      TEXT,
            approval          TEXT,
            input_megapixels  INTEGER NOT NULL DEFAULT 0,
            seq               BIGINT GENERATED ALWAYS AS IDENTITY
        )""",
        "CREATE INDEX jobs_by_created ON jobs (created_at)",
        "CREATE INDEX jobs_by_status ON jobs (status)",
        "CREATE INDEX jobs_pending_save ON jobs (pending_save) WHERE pending_save",
        """CREATE TABLE intents (
            intent_id         TEXT PRIMARY KEY,
            endpoint_id       TEXT NOT NULL,
            arguments         TEXT NOT NULL,
            prompt            TEXT NOT NULL,
            cost_usd          DOUBLE PRECISION,
            webhook_url       TEXT,
            created_at        TEXT NOT NULL,
            state             TEXT NOT NULL CHECK (state IN ('pending', 'unconfirmed')),
            note              TEXT,
            unit_price        DOUBLE PRECISION,
            price_source      TEXT,
            approval          TEXT,
            input_megapixels  INTEGER NOT NULL DEFAULT 0,
            seq               BIGINT GENERATED ALWAYS AS IDENTITY
        )""",
        """CREATE TABLE spend (
            bucket       TEXT NOT NULL,
            endpoint_id  TEXT NOT NULL,
            charge       TEXT NOT NULL,
            cost_usd     DOUBLE PRECISION NOT NULL,
            jobs         BIGINT NOT NULL,
            PRIMARY KEY (bucket, endpoint_id, charge)
        )""",
    ),
    # 2: a team's server: owners, leases on following a job, users' own fal keys (sealed).
    (
        "ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT 'local'",
        "ALTER TABLE jobs ADD COLUMN lease_holder TEXT",
        "ALTER TABLE jobs ADD COLUMN lease_expires TEXT",
        "CREATE INDEX jobs_by_owner ON jobs (owner, created_at)",
        "CREATE INDEX jobs_unfinished ON jobs (lease_expires) WHERE status IN ('queued', 'in_progress') OR pending_save",
        "ALTER TABLE intents ADD COLUMN owner TEXT NOT NULL DEFAULT 'local'",
        "ALTER TABLE spend ADD COLUMN owner TEXT NOT NULL DEFAULT 'local'",
        "ALTER TABLE spend DROP CONSTRAINT spend_pkey",
        "ALTER TABLE spend ADD PRIMARY KEY (owner, bucket, endpoint_id, charge)",
        """CREATE TABLE user_keys (
            owner       TEXT PRIMARY KEY,
            sealed      TEXT NOT NULL,
            updated_at  TEXT NOT NULL
        )""",
    ),
    # Further migrations: a new tuple of statements here.
)

#: The schema version this code writes.
SCHEMA_VERSION = len(_MIGRATIONS)


class PgRow(tuple[Any, ...]):
    """A row readable by position and by column name, as the SQLite backend's rows are."""

    _names: dict[str, int]

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        if isinstance(key, str):
            return super().__getitem__(self._names[key])
        return super().__getitem__(key)


def _rows(cursor: psycopg.Cursor[Any]) -> RowMaker[PgRow]:
    names = {column.name: index for index, column in enumerate(cursor.description or ())}

    def make(values: Sequence[Any]) -> PgRow:
        row = PgRow(values)
        row._names = names
        return row

    return make


@lru_cache(maxsize=256)
def _placeholders(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (the journal's statements hold no literal ``?``)."""
    return sql.replace("%", "%%").replace("?", "%s")


class _Session:
    """Statements on the shared connection, which the caller holds the lock of."""

    def __init__(self, connection: psycopg.Connection[PgRow]) -> None:
        self._connection = connection

    def rows(self, sql: str, parameters: Sequence[Any] = ()) -> list[Row]:
        return self._connection.execute(_placeholders(sql), parameters).fetchall()

    def run(self, sql: str, parameters: Sequence[Any] = ()) -> int:
        return self._connection.execute(_placeholders(sql), parameters).rowcount


class PostgresJournal(Journal):
    """The jobs of every server sharing one PostgreSQL database."""

    _ORDER = "seq"
    _BUCKET_SQL = (
        "substr(created_at, 1, 14) || lpad(CAST(CAST(substr(created_at, 15, 2) AS INTEGER) / 15 * 15 AS TEXT), "
        "2, '0') || ':00.000000+00:00'"
    )
    _FOR_UPDATE = " FOR UPDATE"

    def __init__(self, url: str) -> None:
        self._url = url
        self._lock = threading.Lock()
        self._connection = self._connect()
        try:
            with self._session(write=True) as session:
                self._migrate(session)
        except BaseException:
            self._connection.close()
            raise

    def _connect(self) -> psycopg.Connection[PgRow]:
        try:
            return psycopg.connect(self._url, autocommit=True, row_factory=_rows, connect_timeout=10)
        except psycopg.OperationalError as exc:
            # psycopg's message names the host, port and user, never the password.
            raise JournalError(
                f"the job journal's PostgreSQL database (FLUX_MCP_DATABASE_URL) cannot be reached: {exc}"
            ) from None

    def _migrate(self, session: _Session) -> None:
        session.rows("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
        session.run(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        version = session.rows("SELECT COALESCE(MAX(version), 0) FROM schema_version")[0][0]
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"the job journal's database was written by a newer fal-flux-mcp (schema {version}, this "
                f"version knows {SCHEMA_VERSION}); upgrade fal-flux-mcp or point FLUX_MCP_DATABASE_URL "
                "at another database"
            )
        for number, statements in enumerate(_MIGRATIONS[version:], start=version + 1):
            for statement in statements:
                session.run(statement)
            session.run(
                "INSERT INTO schema_version (version, applied_at) VALUES (?, CAST(now() AS TEXT))", (number,)
            )

    def _connected(self) -> psycopg.Connection[PgRow]:
        if self._connection.closed or self._connection.broken:
            self._connection = self._connect()
        return self._connection

    @contextmanager
    def _session(self, *, write: bool = False, synced: bool = False) -> Iterator[_Session]:
        # Every PostgreSQL commit is durable unless the server was told otherwise: ``synced`` is given.
        with self._lock, ExitStack() as stack:
            connection = self._connected()
            if write:
                try:
                    stack.enter_context(connection.transaction())
                except psycopg.OperationalError:
                    if not connection.broken:
                        raise
                    # The database dropped the connection (a restart, a failover) before this
                    # transaction began: nothing was done, so begin it on a new one.
                    connection = self._connected()
                    stack.enter_context(connection.transaction())
            yield _Session(connection)

    def read(self, sql: str, parameters: Sequence[Any] = ()) -> list[Row]:
        """Rows of a read-only query, asked again on a new connection if the database dropped the old one."""
        try:
            return super().read(sql, parameters)
        except psycopg.OperationalError:
            if not self._connection.broken:
                raise
            return super().read(sql, parameters)

    def _lock_budgets(self, session: Session, owner: str) -> None:
        """One lock per user: a budget check counts only its user's spend, so other users need not wait."""
        session.rows("SELECT pg_advisory_xact_lock(?)", (_budget_lock(owner),))

    def close(self) -> None:
        """Close the connection; the database keeps everything."""
        with self._lock:
            self._connection.close()
