"""A team's deployment end to end: real MCP clients with bearer JWTs, through nginx, to two replicas on
one PostgreSQL, each a real ``fal-flux-mcp`` process (see tests/team.py for the topology)."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import anyio
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import ResourcesListChanged
from mcp.types import CallToolResult

from fal_flux_mcp.emulator import Emulator
from tests.issuer import Issuer
from tests.team import (
    COMPOSE_LISTEN,
    COMPOSE_REPLICAS,
    NGINX_CONF,
    REPO,
    TEST_ONLY,
    Team,
    replica_env,
    wait_until,
)
from tests.test_server_transports import INITIALIZE, MCP_HEADERS

pytestmark = pytest.mark.anyio

SCHNELL = {"prompt": "a lighthouse at dusk", "model": "fal-ai/flux/schnell"}
#: $0.06 an image at fal's list price (the emulator's).
ULTRA = {"prompt": "a fox in the snow", "model": "fal-ai/flux-pro/v1.1-ultra"}


def text_of(result: CallToolResult) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


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


async def test_missing_bad_signature_wrong_audience_and_expired_tokens_are_refused(team: Team) -> None:
    now = int(time.time())
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    tokens = {
        "missing": None,
        "bad signature": team.token("mallory", key=forger),
        "wrong audience": team.token("mallory", aud="http://127.0.0.1:1/mcp"),
        "expired": team.token("mallory", exp=now - 120, iat=now - 600),
    }
    async with httpx.AsyncClient() as http:
        for case, token in tokens.items():
            headers = {**MCP_HEADERS, **({"Authorization": f"Bearer {token}"} if token else {})}
            for _ in team.replicas:  # round robin: each replica refuses it
                answer = await http.post(f"{team.origin}/mcp", json=INITIALIZE, headers=headers)
                assert answer.status_code == 401, (case, answer.status_code, answer.text)
                assert answer.headers["www-authenticate"].startswith("Bearer"), case
        authorised = {**MCP_HEADERS, "Authorization": f"Bearer {team.token('alice')}"}
        good = await http.post(f"{team.origin}/mcp", json=INITIALIZE, headers=authorised)
        assert good.status_code == 200, good.text
        # The audience's Host passes the replicas' DNS-rebinding check behind nginx; another name does not.
        rebound = await http.post(
            f"{team.origin}/mcp",
            json=INITIALIZE,
            headers={**authorised, "Host": f"rebound.example:{team.nginx.port}"},
        )
        assert rebound.status_code == 421, rebound.text
    answered = team.nginx.answered_by()  # each replica refused every kind of bad token
    assert all(answered[replica.upstream] >= len(tokens) for replica in team.replicas), answered


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
