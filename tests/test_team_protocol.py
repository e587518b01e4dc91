"""What crosses replicas in the protocol itself, end to end through the team's topology: the sealed
``requestState`` of a spend question (shared keys), older clients' sessions (none, with stateless HTTP),
and the links to the user-keys page."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp.shared.exceptions import MCPError
from mcp.types import ElicitResult

from fal_flux_mcp.emulator import Emulator
from tests.team import Replica, Team
from tests.test_settings import run_cli
from tests.test_team import SCHNELL, ULTRA, text_of
from tests.test_user_keys import ALICE_KEY, BOB_KEY, SECRET, Browser, entering, link_in

pytestmark = pytest.mark.anyio


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


def test_request_state_keys_too_short_stop_the_start_in_words_without_showing_them(tmp_path: Path) -> None:
    short = "a-secret-but-short"
    env = {"FLUX_MCP_REQUEST_STATE_KEYS": f"{'k' * 64},{short}", "FLUX_MCP_STATE_DIR": str(tmp_path / "s")}
    completed = run_cli("serve", "--transport", "streamable-http", env=env, home=tmp_path)
    assert completed.returncode == 2
    assert "FLUX_MCP_REQUEST_STATE_KEYS=(hidden): every key must be at least 32 bytes" in completed.stderr
    assert short not in completed.stderr and "k" * 64 not in completed.stderr


def test_stateless_http_takes_true_or_false(tmp_path: Path) -> None:
    env = {"FLUX_MCP_STATELESS_HTTP": "maybe", "FLUX_MCP_STATE_DIR": str(tmp_path / "s")}
    completed = run_cli("serve", "--transport", "streamable-http", env=env, home=tmp_path)
    assert completed.returncode == 2
    assert (
        "FLUX_MCP_STATELESS_HTTP='maybe'" in completed.stderr and "Allowed: true or false" in completed.stderr
    )


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
