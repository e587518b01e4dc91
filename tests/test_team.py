"""A team's deployment end to end: real MCP clients with bearer JWTs, through nginx, to two replicas on
one PostgreSQL, each a real ``fal-flux-mcp`` process (see tests/team.py for the topology)."""

from __future__ import annotations

import functools
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import ResourcesListChanged
from mcp.types import CallToolResult, ElicitResult

from fal_flux_mcp.emulator import Emulator
from tests.issuer import Issuer, running_issuer
from tests.team import (
    COMPOSE_LISTEN,
    COMPOSE_REPLICAS,
    NGINX_CONF,
    REPO,
    TEST_ONLY,
    Replica,
    Team,
    replica_env,
    running_team,
    wait_until,
)
from tests.test_settings import run_cli
from tests.test_user_keys import ALICE_KEY, BOB_KEY, SECRET, Browser, entering, link_in

pytestmark = pytest.mark.anyio

SCHNELL = {"prompt": "a lighthouse at dusk", "model": "fal-ai/flux/schnell"}
#: $0.06 an image at fal's list price (the emulator's).
ULTRA = {"prompt": "a fox in the snow", "model": "fal-ai/flux-pro/v1.1-ultra"}


def text_of(result: CallToolResult) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    with running_issuer() as running:
        yield running


@pytest.fixture
def start_team(
    emulator: Emulator, issuer: Issuer, database_url: str, tmp_path: Path
) -> Callable[..., AbstractContextManager[Team]]:
    """Starts the topology on this test's emulator, issuer, database and folder (``running_team``'s options)."""
    return functools.partial(
        running_team,
        emulator_url=emulator.url,
        fal_key=emulator.key,
        issuer=issuer,
        database_url=database_url,
        folder=tmp_path,
    )


@pytest.fixture
def team(start_team: Callable[..., AbstractContextManager[Team]]) -> Iterator[Team]:
    with start_team() as running:
        yield running


async def test_a_job_submitted_through_one_replica_is_finished_and_seen_through_the_other(
    team: Team, emulator: Emulator
) -> None:
    emulator.config.job_seconds = 1.0
    first, second = team.replicas
    async with team.client("alice", origin=first.origin) as client:
        submitted = await client.call_tool("submit_job", SCHNELL)
    assert not submitted.is_error, text_of(submitted)
    job_id = submitted.structured_content["job_id"]

    async with team.client("alice", origin=second.origin) as client:
        with anyio.fail_after(20):
            while (
                status := await client.call_tool("check_status", {"job_id": job_id, "wait_seconds": 1})
            ).structured_content["status"] != "completed":
                assert not status.is_error, text_of(status)
        job = await client.read_resource(f"flux://jobs/{job_id}")
    assert len(status.structured_content["images"]) == 1
    assert job_id in job.contents[0].text  # type: ignore[union-attr]
    assert emulator.counters["submit"] == 1
    assert len(team.saved_files()) == 1

    # Through nginx: the same job, whichever replica answers; and both replicas do answer.
    async with team.client("alice") as client:
        for _ in range(4):
            seen = await client.call_tool("check_status", {"job_id": job_id})
            assert seen.structured_content["status"] == "completed", text_of(seen)
    answered = team.nginx.answered_by()
    assert answered[first.upstream] > 0 and answered[second.upstream] > 0, answered


@pytest.mark.xfail(reason="needs change notifications across replicas (issue12-leases)", strict=False)
async def test_a_client_listening_on_one_replica_hears_of_a_job_the_other_finished(
    team: Team, emulator: Emulator
) -> None:
    emulator.config.job_seconds = 0.5
    first, second = team.replicas
    async with team.client("alice", origin=second.origin) as listener:  # a listen stream stays on one replica
        async with listener.listen(resources_list_changed=True) as events:
            async with team.client("alice", origin=first.origin) as client:  # which submits, and follows it
                submitted = await client.call_tool("submit_job", SCHNELL)
            assert not submitted.is_error, text_of(submitted)
            with anyio.fail_after(15):
                event = await anext(aiter(events))
        assert isinstance(event, ResourcesListChanged)
        listed = await listener.list_resources()
    job_id = submitted.structured_content["job_id"]
    assert f"flux://images/{job_id}/0" in [str(resource.uri) for resource in listed.resources]


async def test_missing_bad_signature_wrong_audience_and_expired_tokens_are_refused(
    team: Team, issuer: Issuer
) -> None:
    now = int(time.time())
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    tokens = {
        "missing": None,
        "bad signature": team.token("mallory", key=forger),
        "wrong audience": team.token("mallory", aud="http://127.0.0.1:1/mcp"),
        "expired": team.token("mallory", exp=now - 120, iat=now - 600),
    }
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "test", "version": "1"},
        },
    }
    async with httpx.AsyncClient() as http:
        for case, token in tokens.items():
            headers = {"Accept": "application/json, text/event-stream"}
            if token is not None:
                headers["Authorization"] = f"Bearer {token}"
            for _ in team.replicas:  # round robin: each replica refuses it
                answer = await http.post(f"{team.origin}/mcp", json=initialize, headers=headers)
                assert answer.status_code == 401, (case, answer.status_code, answer.text)
                assert answer.headers["www-authenticate"].startswith("Bearer"), case
        good = await http.post(
            f"{team.origin}/mcp",
            json=initialize,
            headers={
                "Accept": "application/json, text/event-stream",
                "Authorization": f"Bearer {team.token('alice')}",
            },
        )
        assert good.status_code == 200, good.text
        # The audience's Host passes the replicas' DNS-rebinding check behind nginx; another name does not.
        rebound = await http.post(
            f"{team.origin}/mcp",
            json=initialize,
            headers={
                "Accept": "application/json, text/event-stream",
                "Authorization": f"Bearer {team.token('alice')}",
                "Host": f"rebound.example:{team.nginx.port}",
            },
        )
        assert rebound.status_code == 421, rebound.text
    answered = team.nginx.answered_by()  # each replica refused every kind of bad token
    assert all(answered[replica.upstream] >= len(tokens) for replica in team.replicas), answered


class ToolCallsAlternate(httpx2.AsyncBaseTransport):
    """Sends each ``tools/call`` POST to the next replica in turn (everything else to the first), so that
    the two rounds of a spend question surely reach two different replicas; notes where each went."""

    def __init__(self, replicas: list[Replica]) -> None:
        self.inner = httpx2.AsyncHTTPTransport()
        self.replicas = replicas
        self.calls: list[str] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        replica = self.replicas[0]
        if request.method == "POST" and json.loads(request.content or b"{}").get("method") == "tools/call":
            replica = self.replicas[len(self.calls) % len(self.replicas)]
            self.calls.append(replica.name)
        request.url = request.url.copy_with(port=replica.port)
        request.headers["Host"] = replica.upstream
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def leaves(error: BaseException) -> str:
    """The messages of every error an exception group holds."""
    if isinstance(error, BaseExceptionGroup):
        return "\n".join(leaves(inner) for inner in error.exceptions)
    return str(error)


def approving(asked: list[str]) -> Any:
    async def callback(context: object, params: Any) -> ElicitResult:
        asked.append(params.message)
        return ElicitResult(action="accept", content={"approve": True})

    return callback


@pytest.fixture
def asking_team(start_team: Callable[..., AbstractContextManager[Team]]) -> Iterator[Team]:
    """The team with a per-call limit under ultra's price ($0.06): such a call asks the user first."""
    with start_team(env={"FLUX_MCP_MAX_USD_PER_CALL": "0.05"}) as running:
        yield running


async def test_the_spend_question_asked_by_one_replica_is_answered_on_the_other(
    asking_team: Team, emulator: Emulator
) -> None:
    emulator.config.job_seconds = 0.1
    route = ToolCallsAlternate(asking_team.replicas)
    asked: list[str] = []
    async with asking_team.client(
        "alice", http=httpx2.AsyncClient(transport=route), elicitation_callback=approving(asked)
    ) as client:
        result = await client.call_tool("generate_image", ULTRA)
    assert not result.is_error, text_of(result)
    assert result.structured_content["status"] == "completed"
    assert result.structured_content["approval"] == "approved by the user"
    assert route.calls == ["replica-1", "replica-2"]  # asked by one, answered on the other
    (question,) = asked
    assert "$0.06" in question
    assert emulator.counters["submit"] == 1


async def test_legacy_clients_are_served_by_any_replica_and_refused_in_words_over_a_limit(
    asking_team: Team, emulator: Emulator
) -> None:
    asked: list[str] = []
    async with asking_team.client("alice", mode="legacy", elicitation_callback=approving(asked)) as client:
        tools = await client.list_tools()
        assert "generate_image" in {tool.name for tool in tools.tools}
        within = await client.call_tool("generate_image", SCHNELL)
        assert within.structured_content["status"] == "completed", text_of(within)
        for _ in range(3):
            seen = await client.call_tool("check_status", {"job_id": within.structured_content["job_id"]})
            assert seen.structured_content["status"] == "completed", text_of(seen)
        over = await client.call_tool("generate_image", ULTRA)
    # No session to keep: the requests went to both replicas, none was lost.
    answered = asking_team.nginx.answered_by()
    assert all(answered[replica.upstream] >= 2 for replica in asking_team.replicas), answered
    # The question cannot reach a sessionless legacy client: the call is refused in words, nothing spent.
    assert over.is_error and "nothing was spent" in text_of(over) and "cannot ask the user" in text_of(over)
    assert asked == []
    assert emulator.counters["submit"] == 1


async def test_without_shared_keys_the_answer_on_the_other_replica_is_refused_and_nothing_is_spent(
    start_team: Callable[..., AbstractContextManager[Team]], emulator: Emulator
) -> None:
    with start_team(keys=None, env={"FLUX_MCP_MAX_USD_PER_CALL": "0.05"}) as team:
        route = ToolCallsAlternate(team.replicas)
        asked: list[str] = []
        async with team.client(
            "alice", http=httpx2.AsyncClient(transport=route), elicitation_callback=approving(asked)
        ) as client:
            with pytest.raises(MCPError, match="Invalid or expired requestState"):
                await client.call_tool("generate_image", ULTRA)
        assert len(asked) == 1 and route.calls == ["replica-1", "replica-2"]
        assert emulator.counters["submit"] == 0
        # And legacy sessions, kept by one replica each, break when nginx sends a request to the other.
        with pytest.raises(BaseExceptionGroup) as broken:
            async with team.client("alice", mode="legacy") as client:
                for _ in range(4):
                    await client.list_tools()
        assert "Session not found" in leaves(broken.value)


async def test_a_budget_both_replicas_share_is_never_exceeded_under_ten_concurrent_calls(
    start_team: Callable[..., AbstractContextManager[Team]], emulator: Emulator
) -> None:
    emulator.config.job_seconds = 0.5
    budget = {"FLUX_MCP_DAILY_BUDGET_USD": "0.20", "FLUX_MCP_MAX_USD_PER_CALL": "off"}  # three at $0.06
    with start_team(env=budget) as team:
        results: list[CallToolResult] = []
        async with team.client("alice") as client:

            async def one(number: int) -> None:
                results.append(await client.call_tool("submit_job", {**ULTRA, "seed": number}))

            async with anyio.create_task_group() as group:
                for number in range(10):
                    group.start_soon(one, number)
            spend = await client.call_tool("get_spend", {})
        answered = team.nginx.answered_by()
    assert all(answered[replica.upstream] >= 3 for replica in team.replicas), answered
    refused = [result for result in results if result.is_error]
    assert len(results) - len(refused) == 3
    assert all("FLUX_MCP_DAILY_BUDGET_USD" in text_of(result) for result in refused)
    assert emulator.counters["submit"] == 3
    today = spend.structured_content["periods"][0]
    assert today["total_usd"] == pytest.approx(0.18)


async def refusal(client: Client, uri: str) -> str:
    """What reading ``uri`` answers when it is refused (it must be)."""
    with pytest.raises(MCPError) as refused:
        await client.read_resource(uri)
    return str(refused.value)


async def test_one_user_cannot_see_or_cancel_another_users_jobs_on_either_replica(
    team: Team, emulator: Emulator
) -> None:
    async with team.client("bob") as bob:
        finished = await bob.call_tool("generate_image", SCHNELL)
        assert finished.structured_content["status"] == "completed", text_of(finished)
        emulator.config.job_seconds = 60
        running = await bob.call_tool("submit_job", {**SCHNELL, "seed": 7})
        assert not running.is_error, text_of(running)
    bobs = [finished.structured_content["job_id"], running.structured_content["job_id"]]
    nobody = str(uuid.uuid4())

    async def answers(alice: Client, job_id: str) -> list[str]:
        """Everything alice can try on ``job_id``, with the id itself left out."""
        status = await alice.call_tool("check_status", {"job_id": job_id})
        cancel = await alice.call_tool("cancel_job", {"job_id": job_id})
        assert status.is_error and cancel.is_error
        texts = [text_of(status), text_of(cancel)]
        texts += [
            await refusal(alice, f"flux://jobs/{job_id}"),
            await refusal(alice, f"flux://images/{job_id}/0"),
        ]
        return [text.replace(job_id, "<job id>") for text in texts]

    for replica in team.replicas:
        async with team.client("alice", origin=replica.origin) as alice:
            unknown = await answers(alice, nobody)
            for job_id in bobs:  # the same answer as for a job that does not exist: nothing to probe for
                assert await answers(alice, job_id) == unknown
            listed = await alice.list_resources()
            assert not [
                resource.uri for resource in listed.resources if any(b in str(resource.uri) for b in bobs)
            ]
            spend = (await alice.call_tool("get_spend", {})).structured_content
            assert spend["periods"][0]["total_usd"] == 0 and spend["most_expensive"] == []
    assert emulator.counters["cancel"] == 0
    async with team.client("bob") as bob:  # bob's work is untouched, and his
        still = await bob.call_tool("check_status", {"job_id": bobs[1]})
        assert still.structured_content["status"] in ("queued", "in_progress"), text_of(still)
        image = await bob.read_resource(f"flux://images/{bobs[0]}/0")
        assert image.contents
        cancelled = await bob.call_tool("cancel_job", {"job_id": bobs[1]})
        assert not cancelled.is_error, text_of(cancelled)


@pytest.mark.xfail(reason="needs leases and takeover (issue12-leases)", strict=False)
async def test_the_replica_following_a_job_is_killed_and_the_other_finishes_it_once(
    team: Team, emulator: Emulator
) -> None:
    emulator.config.job_seconds = 2.0
    follower, other = team.replicas
    async with team.client("alice", origin=follower.origin) as client:  # it submits, so it follows the job
        submitted = await client.call_tool("submit_job", {**ULTRA, "num_images": 2})
    assert not submitted.is_error, text_of(submitted)
    job_id = submitted.structured_content["job_id"]
    follower.kill()

    # Nobody asks: the other replica takes the job over on its own, and saves its images.
    def finished() -> bool:
        row = team.job_row(job_id)
        return row is not None and row["status"] == "completed" and not row["pending_save"]

    wait_until(
        finished, f"job {job_id} finished by {other.name} after {follower.name} was killed", timeout=20
    )
    async with team.client("alice") as client:  # through nginx, which finds only the living replica
        status = await client.call_tool("check_status", {"job_id": job_id})
        spend = (await client.call_tool("get_spend", {})).structured_content
    assert status.structured_content["status"] == "completed", text_of(status)
    files = team.saved_files()
    assert len(files) == 2 and not [file for file in files if file.suffix == ".part"], files
    assert sorted(image["path"] for image in status.structured_content["images"]) == [str(f) for f in files]
    assert emulator.counters["submit"] == 1
    # The cost once: one row for the job, $0.12 for two ultra images, and that is all the day's spend.
    assert team.count_rows("jobs", job_id) == 1
    assert spend["periods"][0]["total_usd"] == pytest.approx(0.12)
    assert [job["job_id"] for job in spend["most_expensive"]] == [job_id]


def test_compose_describes_the_topology_the_tests_run() -> None:
    """compose.yaml, the Dockerfile and deploy/nginx.conf name the pieces tests/team.py starts, with every
    setting the replicas get here (but the test-only ones), so that the two cannot drift apart."""
    compose = (REPO / "compose.yaml").read_text()
    dockerfile = (REPO / "Dockerfile").read_text()
    nginx = NGINX_CONF.read_text()
    services = re.findall(
        r"^  ([a-z0-9-]+):$", compose.split("\nservices:\n", 1)[1].split("\nvolumes:\n")[0], re.M
    )
    assert services == ["postgres", "replica-1", "replica-2", "nginx"]
    assert "./deploy/nginx.conf:/etc/nginx/conf.d/default.conf" in compose
    for upstream in COMPOSE_REPLICAS:  # the replicas by their service names, on the Dockerfile's port
        name, port = upstream.split(":")
        assert f"server {upstream} " in nginx and f"FLUX_MCP_REPLICA_ID: {name}" in compose
        assert f'"--port", "{port}"' in dockerfile and f"EXPOSE {port}" in dockerfile
    assert COMPOSE_LISTEN in nginx and '"8080:8080"' in compose
    assert '"streamable-http"' in dockerfile
    given = replica_env(
        "http://fal", "k:s", Issuer(url="https://i/jwks"), "http://a/mcp", "postgresql://d", REPO, "k"
    )
    for variable in sorted(set(given) - TEST_ONLY):
        assert f"{variable}:" in compose or f"{variable}=" in dockerfile, variable


def test_request_state_keys_too_short_stop_the_start_in_words_without_showing_them(tmp_path: Path) -> None:
    short = "a-secret-but-short"
    env = {"FLUX_MCP_REQUEST_STATE_KEYS": f"{'k' * 64},{short}", "FLUX_MCP_STATE_DIR": str(tmp_path / "s")}
    completed = run_cli("serve", "--transport", "streamable-http", env=env, home=tmp_path)
    assert completed.returncode == 2
    assert "FLUX_MCP_REQUEST_STATE_KEYS=(hidden): every key must be at least 32 bytes" in completed.stderr
    assert short not in completed.stderr and "k" * 64 not in completed.stderr


async def test_users_keys_entered_on_either_replica_pay_for_their_jobs_on_both(
    start_team: Callable[..., AbstractContextManager[Team]], emulator: Emulator
) -> None:
    emulator.config.keys = [ALICE_KEY, BOB_KEY]
    emulator.config.job_seconds = 0.1
    with start_team(env={"FLUX_MCP_USER_KEYS": "on", "FLUX_MCP_USER_KEYS_SECRET": SECRET}) as team:
        # A 2026-07-28 client: sent to the key page by the first replica, its retry answered by the second.
        route = ToolCallsAlternate(team.replicas)
        urls: list[str] = []
        async with team.client(
            "alice",
            http=httpx2.AsyncClient(transport=route),
            elicitation_callback=entering(Browser(), ALICE_KEY, urls),
        ) as alice:
            paid = await alice.call_tool("generate_image", SCHNELL)
        assert not paid.is_error, text_of(paid)
        assert route.calls == ["replica-1", "replica-2"] and len(urls) == 1
        assert emulator.job(paid.structured_content["job_id"]).account == "alice-key-id"

        # An older client through nginx, without a session: no mid-call question, but the link to the page,
        # at nginx's address; the page's form may be answered by either replica.
        async with team.client("bob", mode="legacy") as bob:
            refused = await bob.call_tool("generate_image", SCHNELL)
            assert refused.is_error and link_in(refused).startswith(f"{team.origin}/keys?"), text_of(refused)
            saved = await Browser().enter_key(link_in(refused), BOB_KEY)
            assert saved.status_code == 200 and "Key saved" in saved.text
            retried = await bob.call_tool("generate_image", SCHNELL)
    assert not retried.is_error, text_of(retried)
    assert emulator.job(retried.structured_content["job_id"]).account == "bob-key-id"
    assert emulator.counters["submit"] == 2
