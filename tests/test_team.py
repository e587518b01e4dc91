"""A team's deployment end to end: real MCP clients with bearer JWTs, through nginx, to two replicas on
one PostgreSQL, each a real ``fal-flux-mcp`` process (see tests/team.py for the topology)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult, ElicitResult

from fal_flux_mcp.emulator import Emulator
from tests.issuer import Issuer, running_issuer
from tests.team import Replica, Team, running_team

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
def team(emulator: Emulator, issuer: Issuer, database_url: str, tmp_path: Path) -> Iterator[Team]:
    with running_team(
        emulator_url=emulator.url,
        fal_key=emulator.key,
        issuer=issuer,
        database_url=database_url,
        folder=tmp_path,
    ) as running:
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
def asking_team(emulator: Emulator, issuer: Issuer, database_url: str, tmp_path: Path) -> Iterator[Team]:
    """The team with a per-call limit under ultra's price ($0.06): such a call asks the user first."""
    env = {"FLUX_MCP_MAX_USD_PER_CALL": "0.05"}
    with running_team(
        emulator_url=emulator.url,
        fal_key=emulator.key,
        issuer=issuer,
        database_url=database_url,
        folder=tmp_path,
        env=env,
    ) as running:
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
    emulator: Emulator, issuer: Issuer, database_url: str, tmp_path: Path
) -> None:
    with running_team(
        emulator_url=emulator.url,
        fal_key=emulator.key,
        issuer=issuer,
        database_url=database_url,
        folder=tmp_path,
        keys=None,
        env={"FLUX_MCP_MAX_USD_PER_CALL": "0.05"},
    ) as team:
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
