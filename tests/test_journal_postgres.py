"""What only a shared PostgreSQL journal must do: migrate once, hold budgets across processes, and let
one server find a job another submitted. (Everything else runs on both backends in test_journal.py,
test_retention.py and test_spending.py.)"""

from __future__ import annotations

import multiprocessing
import queue
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
from mcp import Client
from pydantic import SecretStr

from fal_flux_mcp.emulator import Emulator
from fal_flux_mcp.server import build_server
from fal_flux_mcp.server._journal import JournalError
from fal_flux_mcp.server._journal_postgres import SCHEMA_VERSION, PostgresJournal
from fal_flux_mcp.settings import Settings
from tests.budget_worker import reserve
from tests.test_journal import record

ULTRA = "fal-ai/flux-pro/v1.1-ultra"


def test_servers_starting_together_migrate_the_database_once(database_url: str) -> None:
    with ThreadPoolExecutor(6) as pool:
        journals = list(pool.map(lambda _: PostgresJournal(database_url), range(6)))
    try:
        journals[0].add(record())
        assert all(journal.get("req-1") is not None for journal in journals)
    finally:
        for journal in journals:
            journal.close()
    with psycopg.connect(database_url) as connection:
        versions = [row[0] for row in connection.execute("SELECT version FROM schema_version ORDER BY 1")]
    assert versions == list(range(1, SCHEMA_VERSION + 1))


def test_a_database_from_a_newer_version_is_refused_not_damaged(database_url: str) -> None:
    with PostgresJournal(database_url) as journal:
        journal.add(record())
    with psycopg.connect(database_url) as connection:
        connection.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (%s, 'later')", (SCHEMA_VERSION + 1,)
        )
    with pytest.raises(JournalError, match="newer fal-flux-mcp"):
        PostgresJournal(database_url)
    with psycopg.connect(database_url) as connection:
        assert connection.execute("SELECT job_id FROM jobs").fetchall() == [("req-1",)]


def test_an_unreachable_database_is_a_clear_error_without_the_password(postgres_server: Any) -> None:
    url = f"postgresql://flux:hunter2-SECRET@127.0.0.1:{postgres_server.port}/no_such_database"
    with pytest.raises(JournalError, match="FLUX_MCP_DATABASE_URL") as raised:
        PostgresJournal(url)
    assert "hunter2-SECRET" not in str(raised.value)


def race_to_reserve(database_url: str, tmp_path: Path, owners: list[str]) -> list[str | None]:
    """One fresh server process per entry of ``owners``, all reserving $0.06 for it at once: each refusal."""
    PostgresJournal(database_url).close()  # migrated once, so that the processes only race to spend
    # Fresh processes (not forks of this threaded one), forked from a server that imported the worker once.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tests.budget_worker"])
    start = context.Barrier(len(owners))
    results = context.Queue()
    processes = [
        context.Process(target=reserve, args=(database_url, str(tmp_path), number, start, results, owner))
        for number, owner in enumerate(owners)
    ]
    for process in processes:
        process.start()
    try:
        answers = [results.get(timeout=60) for _ in processes]
    except queue.Empty:
        pytest.fail("a reserving process did not answer within 60 s")
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
    return [refusal for _, refusal in sorted(answers)]


def test_ten_processes_against_a_budget_for_three_reserve_three(database_url: str, tmp_path: Path) -> None:
    refusals = race_to_reserve(database_url, tmp_path, ["local"] * 10)
    assert refusals.count(None) == 3
    assert all("FLUX_MCP_DAILY_BUDGET_USD" in refusal for refusal in refusals if refusal is not None)
    with PostgresJournal(database_url) as journal:
        assert len(journal.intents()) == 3


@pytest.mark.anyio
async def test_a_job_handed_back_by_one_server_is_delivered_by_another_on_the_same_database(
    settings: Settings, emulator: Emulator, database_url: str, tmp_path: Path
) -> None:
    emulator.config.job_seconds = 1.0
    settings.database_url = SecretStr(database_url)
    settings.wait_seconds = 0.2
    async with Client(build_server(settings)) as client:
        first = await client.call_tool(
            "generate_image", {"prompt": "a red kite", "model": "fal-ai/flux/schnell"}
        )
    assert not first.is_error
    job_id = first.structured_content["job_id"]
    assert first.structured_content["status"] in ("queued", "in_progress")

    # Another server: its own state folder (no SQLite file shared), the same database.
    other = settings.model_copy(
        update={"state_dir": tmp_path / "other-state", "output_dir": tmp_path / "other-out"}
    )
    async with Client(build_server(other)) as client:
        with anyio.fail_after(10):
            while (
                done := await client.call_tool("check_status", {"job_id": job_id, "wait_seconds": 0.2})
            ).structured_content["status"] != "completed":
                assert done.structured_content["status"] in ("queued", "in_progress")
    assert not done.is_error
    assert done.structured_content["job_id"] == job_id and len(done.structured_content["images"]) == 1
    assert emulator.counters["submit"] == 1
    assert not (tmp_path / "other-state" / "jobs.sqlite3").exists()


def _drop_connections(database_url: str) -> None:
    """What a database restart or failover does to every server's connection."""
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid != pg_backend_pid()"
        )


def test_a_connection_the_database_dropped_is_opened_again_for_reads_and_writes(database_url: str) -> None:
    with PostgresJournal(database_url) as journal:
        journal.add(record())
        _drop_connections(database_url)
        assert journal.get("req-1") is not None
        _drop_connections(database_url)
        assert journal.add(record("req-2")) is True
        _drop_connections(database_url)
        assert journal.update("req-2", status="completed").status == "completed"
        assert [job.job_id for job in journal.recent()] == ["req-2", "req-1"]
