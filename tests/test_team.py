"""A team's deployment end to end: real MCP clients with bearer JWTs, through nginx, to two replicas on
one PostgreSQL, each a real ``fal-flux-mcp`` process (see tests/team.py for the topology)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from mcp.types import CallToolResult

from fal_flux_mcp.emulator import Emulator
from tests.issuer import Issuer, running_issuer
from tests.team import Team, running_team

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
