"""Each user's own work: two users with real JWTs over Streamable HTTP, each seeing and spending only their own."""

from __future__ import annotations

import socket
import sqlite3
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import ResourcesListChanged, ResourceUpdated
from mcp.types import CallToolResult
from pydantic import SecretStr

from fal_flux_mcp.emulator import Emulator
from fal_flux_mcp.server import build_server, http_app
from fal_flux_mcp.server._identity import NO_USER
from fal_flux_mcp.settings import Settings, UserBudget
from tests.serving import serve
from tests.test_gallery import TOKEN as GALLERY_TOKEN
from tests.test_gallery import generate
from tests.test_oauth import Issuer, audience, issuer, oauth_settings, sock

pytestmark = pytest.mark.anyio

__all__ = ["audience", "issuer", "oauth_settings", "sock"]  # the fixtures this module borrows

SCHNELL = {"prompt": "a fox in the snow", "model": "fal-ai/flux/schnell"}


@asynccontextmanager
async def as_user(
    origin: str, issuer: Issuer, audience: str, subject: str, mode: str = "auto"
) -> AsyncIterator[Client]:
    """An MCP client over Streamable HTTP with ``subject``'s token (``mode``: "legacy" for a session)."""
    authorised = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {issuer.token(subject, aud=audience)}"}
    )
    async with (
        authorised,
        Client(streamable_http_client(f"{origin}/mcp", http_client=authorised), mode=mode) as client,
    ):
        yield client


def text_of(result: CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if hasattr(block, "text"))  # type: ignore[attr-defined]


async def probe(client: Client, job_id: str) -> dict[str, Any]:
    """Every answer a user gets about ``job_id``, with the id itself written out of the texts."""

    def scrub(text: str) -> str:
        return text.replace(job_id, "<id>")

    answers: dict[str, Any] = {}
    for tool, arguments in (
        ("check_status", {"job_id": job_id, "wait_seconds": 0}),
        ("cancel_job", {"job_id": job_id}),
        ("edit_image", {"prompt": "make it brighter", "image_url": f"flux://images/{job_id}/0"}),
    ):
        result = await client.call_tool(tool, arguments)
        answers[tool] = (result.is_error, scrub(text_of(result)))
    for uri in (f"flux://jobs/{job_id}", f"flux://images/{job_id}/0"):
        with pytest.raises(MCPError) as raised:
            await client.read_resource(uri)
        answers[uri.replace(job_id, "<id>")] = (raised.value.error.code, scrub(raised.value.error.message))
    return answers


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_another_users_job_is_answered_like_a_job_that_does_not_exist(
    oauth_settings: Settings,
    issuer: Issuer,
    audience: str,
    sock: socket.socket,
    emulator: Emulator,
    mode: str,
) -> None:
    server = build_server(oauth_settings)
    with serve(http_app(server, "streamable-http", port=sock.getsockname()[1]), sock) as origin:
        async with as_user(origin, issuer, audience, "alice", mode) as alice:
            done = await alice.call_tool("generate_image", SCHNELL)
            assert done.structured_content["status"] == "completed", done.content
            done_id = done.structured_content["job_id"]
            emulator.config.queue_depth = 50  # the next job waits in fal's queue: cancellable
            queued_id = (await alice.call_tool("submit_job", SCHNELL)).structured_content["job_id"]

            async with as_user(origin, issuer, audience, "bob", mode) as bob:
                made_up = await probe(bob, str(uuid.uuid4()))
                assert all(answer[0] for answer in made_up.values()), made_up  # each one an error
                assert "No job '<id>'" in made_up["check_status"][1]
                assert await probe(bob, done_id) == made_up
                assert await probe(bob, queued_id) == made_up

                bobs_uris = {str(resource.uri) for resource in (await bob.list_resources()).resources}
                bobs_spend = (await bob.call_tool("get_spend", {})).structured_content
                bobs_spend_resource = (await bob.read_resource("flux://spend")).contents[0].text  # type: ignore[union-attr]

            alices_uris = {str(resource.uri) for resource in (await alice.list_resources()).resources}
            alices_spend = (await alice.call_tool("get_spend", {})).structured_content
            still = await alice.call_tool("check_status", {"job_id": queued_id, "wait_seconds": 0})

    assert f"flux://images/{done_id}/0" in alices_uris
    assert not any(done_id in uri or queued_id in uri for uri in bobs_uris)
    assert not emulator.job(queued_id).cancelled and still.structured_content["status"] == "queued"
    assert alices_spend["periods"][0]["total_usd"] == pytest.approx(0.006)
    assert {job["job_id"] for job in alices_spend["most_expensive"]} == {done_id, queued_id}
    assert bobs_spend["periods"][0]["total_usd"] == 0 and bobs_spend["most_expensive"] == []
    assert '"total_usd": 0.0' in bobs_spend_resource and done_id not in bobs_spend_resource


async def test_a_user_hears_only_of_their_own_jobs_even_listening_for_anothers(
    oauth_settings: Settings, issuer: Issuer, audience: str, sock: socket.socket, emulator: Emulator
) -> None:
    emulator.config.job_seconds = 0.5
    server = build_server(oauth_settings)
    with serve(http_app(server, "streamable-http", port=sock.getsockname()[1]), sock) as origin:
        async with (
            as_user(origin, issuer, audience, "alice") as alice,
            as_user(origin, issuer, audience, "bob") as bob,
        ):
            alices_job = (await alice.call_tool("submit_job", SCHNELL)).structured_content["job_id"]
            alices_uri = f"flux://jobs/{alices_job}"
            async with (
                alice.listen(resource_subscriptions=[alices_uri]) as alices_events,
                bob.listen(resource_subscriptions=[alices_uri], resources_list_changed=True) as bobs_events,
            ):
                done = await alice.call_tool("check_status", {"job_id": alices_job, "wait_seconds": 10})
                assert done.structured_content["status"] == "completed", done.content
                with anyio.fail_after(5):
                    alices_first = await anext(aiter(alices_events))
                # Everything about Alice's job was published before Bob's own job is made: had any of
                # it reached Bob, it would come first.
                made = await bob.call_tool("generate_image", SCHNELL)
                assert made.structured_content["status"] == "completed", made.content
                with anyio.fail_after(5):
                    bobs_first = await anext(aiter(bobs_events))
    assert isinstance(alices_first, ResourceUpdated) and alices_first.uri == alices_uri
    assert isinstance(bobs_first, ResourcesListChanged), bobs_first  # his own image list, not Alice's job


async def test_each_user_spends_their_own_budget_and_an_override_beats_the_default(
    oauth_settings: Settings, issuer: Issuer, audience: str, sock: socket.socket
) -> None:
    oauth_settings.daily_budget_usd = 0.005  # one image of 0.003 fits, a second does not
    oauth_settings.max_usd_per_call = None
    oauth_settings.user_budgets = {"carol": UserBudget(daily_usd=None), "dave": UserBudget(daily_usd=0)}
    server = build_server(oauth_settings)
    with serve(http_app(server, "streamable-http", port=sock.getsockname()[1]), sock) as origin:
        async with as_user(origin, issuer, audience, "alice") as alice:
            first = await alice.call_tool("generate_image", SCHNELL)
            second = await alice.call_tool("generate_image", SCHNELL)
            alices = (await alice.call_tool("get_spend", {})).structured_content
        async with as_user(origin, issuer, audience, "bob") as bob:
            bobs = await bob.call_tool("generate_image", SCHNELL)
        async with as_user(origin, issuer, audience, "carol") as carol:
            carols = [await carol.call_tool("generate_image", SCHNELL) for _ in range(3)]
        async with as_user(origin, issuer, audience, "dave") as dave:
            daves = await dave.call_tool("generate_image", SCHNELL)

    assert first.structured_content["status"] == "completed"
    assert first.structured_content["budget_left_today_usd"] == pytest.approx(0.002)
    assert second.is_error and "nothing was spent" in text_of(second)
    assert "FLUX_MCP_DAILY_BUDGET_USD ($0.005; $0.003 spent today" in text_of(second)
    assert "this server's operator sets the limits" in text_of(second)  # not "change your client's env"
    assert alices["periods"][0]["total_usd"] == pytest.approx(0.003)
    assert alices["budgets"]["daily_budget_usd"] == 0.005
    assert bobs.structured_content["status"] == "completed", "alice's spend is not bob's"
    assert [result.structured_content["status"] for result in carols] == ["completed"] * 3
    assert carols[-1].structured_content["budget_left_today_usd"] is None  # carol's override: no daily limit
    assert daves.is_error and "FLUX_MCP_USER_BUDGETS['dave'].daily_usd is 0" in text_of(daves)


async def test_a_call_for_no_verified_user_is_refused_in_words(oauth_settings: Settings) -> None:
    """Under OAuth a call that reached a tool without a token (not over HTTP) is served as no one."""
    async with Client(build_server(oauth_settings)) as client:
        for tool, arguments in (
            ("generate_image", SCHNELL),
            ("submit_job", SCHNELL),
            ("check_status", {"job_id": "abc"}),
            ("cancel_job", {"job_id": "abc"}),
            ("get_spend", {}),
            ("open_gallery", {}),
        ):
            result = await client.call_tool(tool, arguments)
            assert result.is_error and text_of(result).endswith(NO_USER), (tool, result.content)
        assert not [
            r for r in (await client.list_resources()).resources if str(r.uri).startswith("flux://images/")
        ]
        with pytest.raises(MCPError, match="carries no verified user"):
            await client.read_resource("flux://spend")


async def test_the_gallery_of_one_persons_server_shows_that_persons_work_only(settings: Settings) -> None:
    settings.http_token = SecretStr(GALLERY_TOKEN)
    with serve(http_app(build_server(settings), "streamable-http")) as origin:
        mine = await generate(origin, "a paper boat", seed=1)
        theirs = await generate(origin, "a red kite", seed=2)
        with sqlite3.connect(settings.state_dir / "jobs.sqlite3") as db:  # as if a team's server wrote it
            db.execute("UPDATE jobs SET owner = 'alice' WHERE job_id = ?", (theirs["job_id"],))
        authorised = {"Authorization": f"Bearer {GALLERY_TOKEN}"}
        async with httpx.AsyncClient(base_url=origin, headers=authorised) as http:
            grid = (await http.get("/gallery")).text
            elsewhere = [
                (await http.get(f"/gallery/{path}")).status_code
                for path in (
                    f"jobs/{theirs['job_id']}",
                    f"cards/{theirs['job_id']}",
                    f"images/{theirs['job_id']}/0",
                )
            ]
            own = (await http.get(f"/gallery/jobs/{mine['job_id']}")).status_code

    assert mine["job_id"] in grid and theirs["job_id"] not in grid
    assert elsewhere == [404, 404, 404] and own == 200
