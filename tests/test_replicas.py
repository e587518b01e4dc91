"""Several servers (replicas) sharing one PostgreSQL journal: each job is followed and finished by one of
them, another takes a job over when its follower dies, and change notifications reach every replica.

The replicas run in this process over real MCP clients (in memory), except the one a test SIGKILLs,
which is a real ``fal-flux-mcp serve`` process. Every replica talks to the same emulator and saves into
the same output folder, as replicas sharing a volume do.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import aclosing
from pathlib import Path

import anyio
import psycopg
import pytest
from mcp import Client
from mcp.shared.subscriptions import ResourcesListChanged, ResourceUpdated, ServerEvent
from pydantic import SecretStr, ValidationError

from fal_flux_mcp.emulator import Emulator
from fal_flux_mcp.fal import FalClient
from fal_flux_mcp.server import build_server
from fal_flux_mcp.server._bus_postgres import PostgresSubscriptionBus, decode, encode
from fal_flux_mcp.server._events import ImagesChanged, JobChanged
from fal_flux_mcp.server._jobs import JobService
from fal_flux_mcp.server._journal import JobRecord, Journal, open_journal
from fal_flux_mcp.server._records import LOCAL_OWNER
from fal_flux_mcp.server._schemas import GenerationParams, job_uri
from fal_flux_mcp.server._submit import submit
from fal_flux_mcp.settings import Settings
from tests.stdio_peer import StdioPeer

pytestmark = pytest.mark.anyio

SCHNELL = "fal-ai/flux/schnell"
#: A short lease, so that a takeover is quick to see; the scan runs every third of it.
LEASE = 1.0


def replica(settings: Settings, database: str | None, name: str) -> Settings:
    """The settings of one replica: the shared journal and output folder, its own id.

    On PostgreSQL each replica has its own state folder; on SQLite the journal is a file in the state
    folder, so the replicas share it (two processes on one machine).
    """
    update: dict[str, object] = {"replica_id": name, "lease_seconds": LEASE}
    if database is not None:
        update |= {
            "database_url": SecretStr(database),
            "state_dir": settings.state_dir.parent / f"state-{name}",
        }
    return settings.model_copy(update=update)


@pytest.fixture
def database(backend: str, request: pytest.FixtureRequest) -> str | None:
    """The PostgreSQL database the replicas share, or None for a SQLite file they share."""
    return str(request.getfixturevalue("database_url")) if backend == "postgres" else None


@pytest.fixture
def shared(settings: Settings, database: str | None) -> Iterator[Journal]:
    """The shared journal, as the test looks at it."""
    with open_journal(replica(settings, database, "test")) as opened:
        yield opened


def saved_files(settings: Settings) -> list[str]:
    return sorted(p.name for p in settings.output_dir.iterdir()) if settings.output_dir.exists() else []


async def test_a_job_is_finished_by_its_follower_and_seen_finished_through_another_replica(
    settings: Settings, emulator: Emulator, database: str | None, shared: Journal
) -> None:
    emulator.config.job_seconds = 1.0
    a, b = replica(settings, database, "a"), replica(settings, database, "b")
    async with Client(build_server(a)) as on_a, Client(build_server(b)) as on_b:
        submitted = await on_a.call_tool("submit_job", {"prompt": "a red kite", "model": SCHNELL})
        job_id = submitted.structured_content["job_id"]
        lease = shared.lease(job_id)
        assert lease is not None and lease.holder == "a"

        glance = await on_b.call_tool("check_status", {"job_id": job_id, "wait_seconds": 0})
        assert not glance.is_error and glance.structured_content["status"] in ("queued", "in_progress")
        waited = await on_b.call_tool("check_status", {"job_id": job_id, "wait_seconds": 10})
        assert not waited.is_error and waited.structured_content["status"] == "completed"

        seen_on_a = await on_a.call_tool("check_status", {"job_id": job_id})
    (image,) = waited.structured_content["images"]
    assert seen_on_a.structured_content["images"][0]["path"] == image["path"]
    assert saved_files(settings) == [Path(image["path"]).name]  # saved once, by a
    assert emulator.counters["result"] == 1  # only the follower fetched the result
    record = shared.get(job_id)
    assert record is not None and record.charge == "final" and record.cost_usd == pytest.approx(0.003)
    assert shared.lease(job_id) is None  # a finished job is no one's to follow


@pytest.mark.parametrize("dies", ["while fal works", "after saving, before recording"])
async def test_a_replica_that_stops_following_without_a_word_is_taken_over(
    settings: Settings, emulator: Emulator, database: str | None, shared: Journal, dies: str
) -> None:
    emulator.config.job_seconds = 1.5
    a, b = replica(settings, database, "a"), replica(settings, database, "b")
    dead = JobService(a, open_journal(a))
    try:
        async with anyio.create_task_group() as group:
            dead.background.task_group = group
            record = await submit(dead, GenerationParams(prompt="a slow heron", model=SCHNELL), LOCAL_OWNER)
            if dies == "while fal works":
                dead.follow_in_background(record)
            else:  # its file is published, but the journal never hears of it
                async with aclosing(dead.fal.stream_status(dead.handle(record))) as updates:
                    async for status in updates:
                        if status.done:
                            break
                output = await dead.fal.result(dead.handle(record))
                assert output is not None
                await dead.saver.save_all(record, output)
                assert len(saved_files(settings)) == 1
            group.cancel_scope.cancel()  # its work stops dead: nothing recorded, no lease given up
    finally:
        await dead.aclose()
        dead.journal.close()
    lease = shared.lease(record.job_id)
    assert lease is not None and lease.holder == "a"

    async with Client(build_server(b)) as on_b:
        async with on_b.listen(resource_subscriptions=[job_uri(record.job_id)]) as events:
            with anyio.fail_after(LEASE + 10):
                event = await anext(aiter(events))
        assert event == ResourceUpdated(uri=job_uri(record.job_id))
        status = await on_b.call_tool("check_status", {"job_id": record.job_id})
    assert status.structured_content["status"] == "completed"
    (image,) = status.structured_content["images"]
    assert saved_files(settings) == [Path(image["path"]).name]  # the file a published is b's too
    assert emulator.counters["submit"] == 1
    rows = shared.read("SELECT COUNT(*) AS n, SUM(cost_usd) AS usd FROM jobs WHERE charge = 'final'")
    assert (rows[0]["n"], rows[0]["usd"]) == (1, pytest.approx(0.003))


async def test_a_job_a_replica_holds_but_nothing_there_follows_is_followed_again(
    settings: Settings, emulator: Emulator, database: str | None, shared: Journal
) -> None:
    emulator.config.job_seconds = 0.3
    a = replica(settings, database, "a")
    async with Client(build_server(a)) as on_a:
        fal = FalClient.from_settings(a)
        try:
            handle = await fal.submit(SCHNELL, {"prompt": "a stray cat"})
        finally:
            await fal.aclose()
        shared.add(
            JobRecord(
                job_id=handle.request_id,
                endpoint_id=SCHNELL,
                status_url=handle.status_url,
                response_url=handle.response_url,
                cancel_url=handle.cancel_url,
                arguments={"prompt": "a stray cat"},
                prompt="a stray cat",
            )
        )
        assert shared.claim(handle.request_id, "a", LEASE)  # a's lease, but a never heard of the job
        async with on_a.listen(resource_subscriptions=[job_uri(handle.request_id)]) as events:
            with anyio.fail_after(5):
                await anext(aiter(events))
    record = shared.get(handle.request_id)
    assert record is not None and record.status == "completed" and len(saved_files(settings)) == 1


async def test_a_running_job_cancelled_through_another_replica_is_told_and_counted_as_fal_may_bill(
    settings: Settings, emulator: Emulator, database: str | None, shared: Journal
) -> None:
    emulator.config.job_seconds = 5
    a, b = replica(settings, database, "a"), replica(settings, database, "b")
    async with Client(build_server(a)) as on_a, Client(build_server(b)) as on_b:
        job_id = (await on_a.call_tool("submit_job", {"prompt": "x", "model": SCHNELL})).structured_content[
            "job_id"
        ]
        with anyio.fail_after(10):
            while not emulator.job(job_id).started:
                await anyio.sleep(0.01)
        emulator.inject("result", "slow", count=1, delay=1.0)  # a takes a moment to record fal's answer
        cancelled = await on_b.call_tool("cancel_job", {"job_id": job_id})
    assert cancelled.structured_content["status"] == "cancelled"
    assert "may still bill" in cancelled.structured_content["message"]
    record = shared.get(job_id)
    assert record is not None and record.status == "cancelled" and record.charge == "possibly_charged"


async def test_a_listener_on_one_replica_hears_a_job_finish_on_another(
    settings: Settings, emulator: Emulator, database_url: str
) -> None:
    emulator.config.job_seconds = 0.2
    a, b = replica(settings, database_url, "a"), replica(settings, database_url, "b")
    async with Client(build_server(a)) as on_a, Client(build_server(b)) as on_b:
        async with on_a.listen(resources_list_changed=True) as events:
            made = await on_b.call_tool("generate_image", {"prompt": "a lantern", "model": SCHNELL})
            assert made.structured_content["status"] == "completed"
            with anyio.fail_after(5):
                event = await anext(aiter(events))
        assert isinstance(event, ResourcesListChanged)
        listed = await on_a.list_resources()
    assert f"flux://images/{made.structured_content['job_id']}/0" in [str(r.uri) for r in listed.resources]


@pytest.mark.parametrize("backend", ["postgres"])
def test_a_replica_killed_mid_job_is_taken_over_and_its_job_saved_and_paid_once(
    settings: Settings, emulator: Emulator, database_url: str, shared: Journal, tmp_path: Path
) -> None:
    emulator.config.job_seconds = 3.0
    doomed = StdioPeer(
        {
            "FAL_KEY": emulator.key,
            "FLUX_MCP_FAL_URL": emulator.url,
            "FLUX_MCP_STATE_DIR": str(tmp_path / "state-doomed"),
            "FLUX_MCP_OUTPUT_DIR": str(settings.output_dir),
            "FLUX_MCP_DATABASE_URL": database_url,
            "FLUX_MCP_LEASE_SECONDS": str(LEASE),
            "FLUX_MCP_REPLICA_ID": "doomed",
            "FLUX_MCP_RETRY_BASE_DELAY": "0.01",
        },
        tmp_path / "doomed.log",
    )
    try:
        doomed.initialize()

        async def survivor() -> tuple[str, float, float]:
            async with Client(build_server(replica(settings, database_url, "survivor"))) as client:
                submitted = await anyio.to_thread.run_sync(
                    doomed.call_tool, "submit", "submit_job", {"prompt": "a moth", "model": SCHNELL}
                )
                job_id = submitted["structuredContent"]["job_id"]
                lease = shared.lease(job_id)
                assert lease is not None and lease.holder == "doomed"
                async with client.listen(resource_subscriptions=[job_uri(job_id)]) as events:
                    doomed.kill()
                    killed = time.monotonic()
                    with anyio.fail_after(15):
                        await anext(aiter(events))
                    return job_id, killed, time.monotonic()

        job_id, killed, finished = anyio.run(survivor)
    finally:
        doomed.stop()
    record = shared.get(job_id)
    assert record is not None and record.status == "completed" and not record.pending_save
    assert finished - killed < LEASE + 3.0 + 2.0  # the lease runs out, then the job's own time at most
    (image,) = record.result["images"]  # type: ignore[index]
    assert saved_files(settings) == [Path(image["path"]).name]  # once, no second copy, no leftovers
    assert (emulator.counters["submit"], emulator.counters["result"]) == (1, 1)
    rows = shared.read("SELECT COUNT(*) AS n, SUM(cost_usd) AS usd FROM jobs WHERE charge = 'final'")
    assert (rows[0]["n"], rows[0]["usd"]) == (1, pytest.approx(0.003))


async def test_each_replica_delivers_each_event_once_its_own_and_the_others(database_url: str) -> None:
    buses = [PostgresSubscriptionBus(database_url), PostgresSubscriptionBus(database_url)]
    heard: list[list[ServerEvent]] = [[], []]
    ended = [anyio.Event(), anyio.Event()]

    def listener(n: int) -> Callable[[ServerEvent], None]:
        def on_event(event: ServerEvent) -> None:
            heard[n].append(event)
            if event == ResourceUpdated(uri=f"end-{1 - n}"):  # the other's last: everything before is in
                ended[n].set()

        return on_event

    async with anyio.create_task_group() as group:
        for n, bus in enumerate(buses):
            bus.subscribe(listener(n))
            await group.start(bus.run)
        await buses[0].publish(ResourceUpdated(uri="from-0"))
        await buses[1].publish(ResourcesListChanged())
        await buses[0].publish(ResourceUpdated(uri="end-0"))
        await buses[1].publish(ResourceUpdated(uri="end-1"))
        with anyio.fail_after(5):
            for event in ended:
                await event.wait()
        group.cancel_scope.cancel()
    for bus in buses:
        await bus.aclose()
    expected = {ResourceUpdated(uri="from-0"), ResourcesListChanged(), ResourceUpdated(uri="end-0")}
    expected.add(ResourceUpdated(uri="end-1"))
    for events in heard:
        assert sorted(map(repr, events)) == sorted(map(repr, expected))  # each once, none twice


def test_the_lease_length_comes_from_the_environment_and_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLUX_MCP_LEASE_SECONDS", "2.5")
    monkeypatch.setenv("FLUX_MCP_REPLICA_ID", "web-1")
    assert (Settings().lease_seconds, Settings().replica_id) == (2.5, "web-1")
    monkeypatch.setenv("FLUX_MCP_LEASE_SECONDS", "0.1")
    with pytest.raises(ValidationError, match="lease_seconds"):
        Settings()


async def test_notifications_flow_again_after_the_database_drops_the_connections(database_url: str) -> None:
    listening, publishing = PostgresSubscriptionBus(database_url), PostgresSubscriptionBus(database_url)
    heard: list[ServerEvent] = []
    arrived = anyio.Event()

    def on_event(event: ServerEvent) -> None:
        heard.append(event)
        arrived.set()

    listening.subscribe(on_event)
    async with anyio.create_task_group() as group:
        await group.start(listening.run)
        await publishing.publish(ResourceUpdated(uri="before"))
        with anyio.fail_after(5):
            await arrived.wait()
        with psycopg.connect(database_url, autocommit=True) as admin:  # a restart, as both buses see it
            dropped = admin.execute(
                "SELECT pg_terminate_backend(pid) AS gone FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND datname = current_database() "
                "AND (query LIKE 'LISTEN %' OR query LIKE 'SELECT pg_notify%')"
            ).fetchall()
        assert len(dropped) == 2
        with anyio.fail_after(10):  # the listener connects again after a short backoff; until then, nothing
            while heard[-1] != ResourceUpdated(uri="after"):
                arrived = anyio.Event()
                await publishing.publish(ResourceUpdated(uri="after"))
                with anyio.move_on_after(0.2):
                    await arrived.wait()
        group.cancel_scope.cancel()
    await publishing.aclose()
    assert heard[0] == ResourceUpdated(uri="before")


def test_an_event_keeps_its_owner_across_the_database() -> None:
    for event in (JobChanged(uri="flux://jobs/j1", owner="alice"), ImagesChanged(owner="bob")):
        assert decode(encode(event, "replica-a")) == ("replica-a", event)
