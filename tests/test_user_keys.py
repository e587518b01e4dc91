"""Each user's own fal key (FLUX_MCP_USER_KEYS=on): entered on the key page, sealed, used only for them.

Two OAuth users reach the server over real HTTP with real MCP clients; the emulator takes both their
keys (and the server's), each as an account of its own, and records which account submitted which
job, so a job followed, finished or cancelled with the wrong key would not even be found. The key
page is driven as a browser would: GET the link, POST the form.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, ElicitResult
from pydantic import SecretStr, ValidationError

from fal_flux_mcp.emulator import Emulator
from fal_flux_mcp.server import build_server, http_app
from fal_flux_mcp.server._journal import Journal, open_journal
from fal_flux_mcp.server._user_keys import TICKET_SECONDS, Sealer
from fal_flux_mcp.settings import Settings
from tests.samples import image_bytes
from tests.serving import bind_free_port, serve
from tests.test_oauth import Issuer, audience, issuer, oauth_settings, sock  # noqa: F401  (fixtures)

pytestmark = pytest.mark.anyio

SECRET = "a test secret for sealing users' fal keys, 48+ bytes long"
ALICE_KEY = "alice-key-id:alice-secret-Zq7Wd93kPx"
BOB_KEY = "bob-key-id:bob-secret-Mh4Tr18vNc"
SCHNELL = {"prompt": "a lighthouse at dusk", "model": "fal-ai/flux/schnell"}
PNG = base64.b64encode(image_bytes()).decode()
TICKET = re.compile(r'name="ticket" value="([^"]+)"')


@dataclass
class Team:
    """The server with users' own keys, the issuer of its users' tokens, and their MCP clients."""

    settings: Settings
    issuer: Issuer
    audience: str
    sock: socket.socket

    @contextmanager
    def serving(self, on: socket.socket | None = None) -> Iterator[str]:
        """The server over HTTP on ``on`` (default: the socket the audience names); yields its origin."""
        bound = on or self.sock
        app = http_app(build_server(self.settings), "streamable-http", port=bound.getsockname()[1])
        with serve(app, bound) as origin:
            yield origin

    @asynccontextmanager
    async def user(self, origin: str, subject: str, **client: Any) -> AsyncIterator[Client]:
        """An MCP client of ``subject``'s, with a token from the issuer."""
        token = self.issuer.token(subject, aud=self.audience)
        authorised = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"})
        async with (
            authorised,
            Client(streamable_http_client(f"{origin}/mcp", http_client=authorised), **client) as mcp,
        ):
            yield mcp


@pytest.fixture
def team(
    oauth_settings: Settings,  # noqa: F811
    emulator: Emulator,
    issuer: Issuer,  # noqa: F811
    audience: str,  # noqa: F811
    sock: socket.socket,  # noqa: F811
) -> Team:
    """OAuth, each user's own key; the emulator takes the server's key and both users' keys."""
    emulator.config.keys = [ALICE_KEY, BOB_KEY]
    emulator.config.job_seconds = 0.1
    oauth_settings.user_keys = True
    oauth_settings.user_keys_secret = SecretStr(SECRET)
    return Team(oauth_settings, issuer, audience, sock)


def text_of(result: CallToolResult) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


class Browser:
    """The user's browser on the key page: what it was shown, and what it posted."""

    def __init__(self) -> None:
        self.pages: list[str] = []

    async def open(self, url: str) -> httpx.Response:
        async with httpx.AsyncClient() as http:
            page = await http.get(url)
        self.pages.append(page.text)
        return page

    async def post(self, url: str, ticket: str, key: str = "", action: str = "save") -> httpx.Response:
        async with httpx.AsyncClient() as http:
            answer = await http.post(url.split("?")[0], data={"ticket": ticket, "key": key, "action": action})
        self.pages.append(answer.text)
        return answer

    async def enter_key(self, url: str, key: str) -> httpx.Response:
        """Open the link and save ``key`` with the form's ticket, as a person would."""
        page = await self.open(url)
        assert page.status_code == 200, page.text
        match = TICKET.search(page.text)
        assert match is not None
        return await self.post(url, match.group(1), key)


def entering(browser: Browser, key: str, urls: list[str]) -> Any:
    """An elicitation callback for a user who opens the link they are sent and enters ``key``."""

    async def callback(context: object, params: Any) -> ElicitResult:
        assert params.mode == "url", params
        urls.append(params.url)
        saved = await browser.enter_key(params.url, key)
        assert saved.status_code == 200, saved.text
        return ElicitResult(action="accept")

    return callback


def renamed(ticket: str, subject: str) -> str:
    """``ticket`` made out to ``subject`` instead, keeping its signature."""
    body, _, mac = ticket.partition(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claimed = json.dumps({**claims, "sub": subject}).encode()
    return base64.urlsafe_b64encode(claimed).decode().rstrip("=") + "." + mac


def link_in(result: CallToolResult) -> str:
    match = re.search(r"(http://\S+/keys\?ticket=[\w.-]+)", text_of(result))
    assert match is not None, text_of(result)
    return match.group(1)


async def completed(journal: Journal, job_id: str) -> str:
    """The job's status once the server has finished it (fails after 10 s)."""
    with anyio.fail_after(10):
        while (record := journal.get(job_id)) is None or not record.is_terminal:
            await anyio.sleep(0.05)
    return record.status


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_each_users_jobs_reach_fal_with_their_own_key_entered_on_the_page(
    team: Team,
    emulator: Emulator,
    mode: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    browser = Browser()
    results: list[CallToolResult] = []
    urls: list[str] = []
    with team.serving() as origin:
        for subject, key in (("alice", ALICE_KEY), ("bob", BOB_KEY)):
            callback = entering(browser, key, urls)
            async with team.user(origin, subject, mode=mode, elicitation_callback=callback) as mcp:
                results.append(await mcp.call_tool("generate_image", SCHNELL))
                results.append(await mcp.call_tool("submit_job", SCHNELL))
                results.append(await mcp.call_tool("upload_file", {"data": PNG, "file_name": "dot.png"}))
            with open_journal(team.settings) as journal:
                assert await completed(journal, results[-2].structured_content["job_id"]) == "completed"
        async with team.user(origin, "alice", mode=mode) as mcp:  # asked once, then remembered
            results.append(
                await mcp.call_tool("check_status", {"job_id": results[1].structured_content["job_id"]})
            )
    assert all(not result.is_error for result in results), [text_of(r) for r in results if r.is_error]
    assert len(urls) == 2 and all(url.startswith(f"{origin}/keys?ticket=") for url in urls)
    accounts = {
        results[0].structured_content["job_id"]: "alice-key-id",
        results[1].structured_content["job_id"]: "alice-key-id",
        results[3].structured_content["job_id"]: "bob-key-id",
        results[4].structured_content["job_id"]: "bob-key-id",
    }
    assert {job_id: emulator.job(job_id).account for job_id in accounts} == accounts
    assert {job.account for job in emulator.jobs()} == {"alice-key-id", "bob-key-id"}  # never the server's
    # The keys went nowhere: not in the logs, any answer, any page, or any file the server wrote.
    written = b"".join(path.read_bytes() for path in team.settings.state_dir.rglob("*") if path.is_file())
    shown = caplog.text + "".join(browser.pages) + "".join(r.model_dump_json() for r in results)
    for key in (ALICE_KEY, BOB_KEY):
        secret = key.split(":")[1]
        assert secret not in shown and secret.encode() not in written


async def test_a_client_that_cannot_elicit_gets_the_link_and_nothing_is_spent(
    team: Team,
    emulator: Emulator,
) -> None:
    browser = Browser()
    with team.serving() as origin:
        async with team.user(origin, "alice") as mcp:
            refused = await mcp.call_tool("generate_image", SCHNELL)
            listed = await mcp.call_tool("list_models", {})  # needs no key
            assert refused.is_error and "never paste the key into the chat" in text_of(refused)
            assert emulator.counters["submit"] == 0 and not listed.is_error
            saved = await browser.enter_key(link_in(refused), ALICE_KEY)
            assert saved.status_code == 200 and "Key saved" in saved.text
            retried = await mcp.call_tool("generate_image", SCHNELL)
            emulator.config.queue_depth = 50  # the next job waits in the queue: there is time to cancel it
            queued = await mcp.call_tool("submit_job", SCHNELL)
            cancelled = await mcp.call_tool("cancel_job", {"job_id": queued.structured_content["job_id"]})
    assert not retried.is_error, text_of(retried)
    assert emulator.job(retried.structured_content["job_id"]).account == "alice-key-id"
    assert cancelled.structured_content["cancelled"], text_of(cancelled)
    assert emulator.job(queued.structured_content["job_id"]).cancelled


async def test_a_users_lost_submission_is_found_in_their_own_history(team: Team, emulator: Emulator) -> None:
    """fal's request history is per account: only the user's own key finds the job their call lost."""
    emulator.inject("submit", "drop", count=1)  # fal queues the job, then the answer is lost
    with team.serving() as origin:
        async with team.user(origin, "alice") as mcp:
            await Browser().enter_key(link_in(await mcp.call_tool("submit_job", SCHNELL)), ALICE_KEY)
            lost = await mcp.call_tool("submit_job", SCHNELL)
            assert lost.is_error and "request history" in text_of(lost)
            (job,) = emulator.jobs()
            with open_journal(team.settings) as journal:
                assert await completed(journal, job.request_id) == "completed"
    assert job.account == "alice-key-id" and emulator.counters["submit"] == 1


async def test_the_page_takes_only_a_good_ticket_and_never_shows_the_key(
    team: Team,
    emulator: Emulator,
) -> None:
    browser = Browser()
    sealer = Sealer(SECRET)
    with team.serving() as origin:
        async with team.user(origin, "alice") as mcp:
            url = link_in(await mcp.call_tool("submit_job", SCHNELL))
        ticket = url.split("ticket=")[1]
        page = f"{origin}/keys"
        forged = {
            "damaged": ticket[:-3] + ("AAA" if not ticket.endswith("AAA") else "BBB"),
            "expired": sealer.ticket("alice", now=time.time() - TICKET_SECONDS - 1),
            "another server's": Sealer("another secret, also long enough to be valid!!").ticket("alice"),
            "none": "",
            "renamed to bob": renamed(ticket, "bob"),
        }
        for name, bad in forged.items():
            opened = await browser.open(f"{page}?ticket={bad}")
            posted = await browser.post(page, bad, ALICE_KEY)
            assert opened.status_code == posted.status_code == 403, name
        shown = await browser.open(url)
        assert shown.status_code == 200 and "no fal key stored" in shown.text
        assert (
            shown.headers["referrer-policy"] == "no-referrer"
            and "default-src 'none'" in shown.headers["content-security-policy"]
        )
        not_a_key = await browser.post(url, ticket, "just-a-secret-without-colon")
        assert not_a_key.status_code == 400 and "Not saved" in not_a_key.text
        assert (await browser.post(url, ticket, ALICE_KEY)).status_code == 200
        again = await browser.open(url)
        assert "is stored here" in again.text and "Delete my key" in again.text
        async with team.user(origin, "bob") as mcp:  # alice's key is alice's only
            assert "/keys?ticket=" in text_of(await mcp.call_tool("submit_job", SCHNELL))
        async with team.user(origin, "alice") as mcp:
            submitted = await mcp.call_tool("submit_job", SCHNELL)
            assert not submitted.is_error, text_of(submitted)
            assert (await browser.post(url, ticket, action="delete")).status_code == 200
            asked = await mcp.call_tool("check_status", {"job_id": submitted.structured_content["job_id"]})
    assert asked.is_error and "/keys?ticket=" in text_of(asked)
    assert not any("just-a-secret" in shown or ALICE_KEY.split(":")[1] in shown for shown in browser.pages)


async def test_another_server_follows_a_users_job_with_that_users_key(
    team: Team, emulator: Emulator, backend: str, request: pytest.FixtureRequest
) -> None:
    """The server that submitted the job stops; the next one, on the same journal (a SQLite file, or
    a PostgreSQL database as replicas share), finishes it in the background."""
    if backend == "postgres":
        team.settings.database_url = SecretStr(request.getfixturevalue("database_url"))
    emulator.config.job_seconds = 1.0
    with team.serving() as origin:
        async with team.user(origin, "bob") as mcp:
            await Browser().enter_key(link_in(await mcp.call_tool("submit_job", SCHNELL)), BOB_KEY)
            job_id = (await mcp.call_tool("submit_job", SCHNELL)).structured_content["job_id"]
    with open_journal(team.settings) as journal:
        assert not journal.get(job_id).is_terminal  # type: ignore[union-attr]
        with team.serving(bind_free_port()):
            assert await completed(journal, job_id) == "completed"
        images = journal.get(job_id).result["images"]  # type: ignore[union-attr, index]
    assert emulator.job(job_id).account == "bob-key-id"
    assert all(Path(image["path"]).is_file() for image in images)


async def test_a_sealed_key_opens_only_for_its_owner_under_its_secret(journal: Journal) -> None:
    sealer = Sealer(SECRET)
    journal.store_sealed_key("alice", sealer.seal("alice", ALICE_KEY))
    sealed = journal.sealed_key("alice")
    assert sealed is not None and ALICE_KEY.split(":")[1] not in sealed
    assert sealer.open("alice", sealed) == ALICE_KEY
    assert sealer.open("bob", sealed) is None  # moved to another user's row, it does not open
    assert Sealer("another secret, also long enough to be valid!!").open("alice", sealed) is None
    journal.store_sealed_key("alice", sealer.seal("alice", BOB_KEY))  # replaced
    assert sealer.open("alice", journal.sealed_key("alice") or "") == BOB_KEY
    assert journal.delete_sealed_key("alice") and journal.sealed_key("alice") is None
    assert not journal.delete_sealed_key("alice")


@pytest.mark.parametrize(("secret", "said"), [(None, "which is unset"), ("short", "not 5 bytes")])
def test_user_keys_need_a_long_secret(secret: str | None, said: str) -> None:
    with pytest.raises(ValidationError) as raised:
        Settings(user_keys=True, user_keys_secret=secret)
    assert "FLUX_MCP_USER_KEYS_SECRET" in str(raised.value) and said in str(raised.value)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_user_who_declines_the_page_spends_nothing(team: Team, emulator: Emulator, mode: str) -> None:
    async def decline(context: object, params: Any) -> ElicitResult:
        return ElicitResult(action="decline")

    with team.serving() as origin:
        async with team.user(origin, "alice", mode=mode, elicitation_callback=decline) as mcp:
            refused = await mcp.call_tool("generate_image", SCHNELL)
    assert refused.is_error and "/keys?ticket=" in text_of(refused), text_of(refused)
    assert emulator.counters["submit"] == 0


async def test_without_http_the_link_needs_the_public_url(settings: Settings, emulator: Emulator) -> None:
    """Over stdio (here: in memory) there is no request to take the page's address from."""
    settings.user_keys, settings.user_keys_secret = True, SecretStr(SECRET)
    async with Client(build_server(settings)) as mcp:
        nowhere = await mcp.call_tool("submit_job", SCHNELL)
    settings.public_url = "https://flux.example.test/"
    async with Client(build_server(settings)) as mcp:
        linked = await mcp.call_tool("submit_job", SCHNELL)
    assert nowhere.is_error and "FLUX_MCP_PUBLIC_URL" in text_of(nowhere)
    assert linked.is_error and "https://flux.example.test/keys?ticket=" in text_of(linked)
    assert emulator.counters["submit"] == 0


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_user_who_opens_the_page_but_saves_nothing_spends_nothing(
    team: Team, emulator: Emulator, mode: str
) -> None:
    """Accepting only means the user went to the page: without a key stored, the call does not go on."""
    team.settings.approval_timeout_seconds = 0.5  # how long an older connection's call waits for the key

    async def open_only(context: object, params: Any) -> ElicitResult:
        return ElicitResult(action="accept")

    with team.serving() as origin:
        async with team.user(origin, "alice", mode=mode, elicitation_callback=open_only) as mcp:
            refused = await mcp.call_tool("submit_job", SCHNELL)
    assert refused.is_error and "No fal key was stored" in text_of(refused), text_of(refused)
    assert emulator.counters["submit"] == 0
