"""Shared fixtures: the anyio backend, a fresh fal emulator per test, settings that point at it, and the
journal's two backends (SQLite, and a PostgreSQL server the tests start)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fal_flux_mcp.emulator import Emulator, EmulatorConfig
from fal_flux_mcp.server._journal import Journal
from fal_flux_mcp.server._journal_postgres import PostgresJournal
from fal_flux_mcp.server._journal_sqlite import SqliteJournal
from fal_flux_mcp.settings import Settings
from tests.postgres import PostgresServer
from tests.team import team_starter

BACKENDS = ("sqlite", "postgres")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    """A running emulator with short jobs; knobs may be changed through ``emulator.config``."""
    with Emulator(EmulatorConfig(job_seconds=0.2)) as emu:
        yield emu


@pytest.fixture
def settings(emulator: Emulator, tmp_path: Path) -> Settings:
    """fal-flux-mcp pointed at the emulator, with every directory under the test's own tmp_path."""
    (tmp_path / "allowed").mkdir()
    return Settings(
        fal_key=emulator.key,
        fal_url=emulator.url,
        output_dir=tmp_path / "out",
        state_dir=tmp_path / "state",
        allowed_dirs=[tmp_path / "allowed"],
        wait_seconds=10,
        retry_attempts=3,
        retry_base_delay=0.01,
        retry_max_delay=0.05,
    )


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole session, stopped (and its data removed) at the end."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def database_url(postgres_server: PostgresServer) -> str:
    """An empty PostgreSQL database of this test's own."""
    return postgres_server.database()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each journal backend in turn."""
    return str(request.param)


@pytest.fixture
def open_store(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[], Journal]:
    """Opens a journal on this test's own store: the same file or database at every call."""
    if backend == "sqlite":
        path = tmp_path / "state" / "jobs.sqlite3"
        return lambda: SqliteJournal(path)
    url = request.getfixturevalue("database_url")
    return lambda: PostgresJournal(url)


@pytest.fixture
def journal(open_store: Callable[[], Journal]) -> Iterator[Journal]:
    """An empty journal on each backend in turn."""
    with open_store() as opened:
        yield opened


@pytest.fixture
def start_team(emulator: Emulator, database_url: str, tmp_path: Path) -> Callable[..., Any]:
    """Starts a team's topology (tests/team.py) on this test's emulator, database and folder; stopped when
    the ``with`` it is used in ends."""
    return team_starter(emulator.url, emulator.key, database_url, tmp_path)
