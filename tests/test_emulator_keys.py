"""Keys against the emulator: which one it takes, how it says so, and keys that must never leave.

Someone pointing their own code (or fal-flux-mcp) at the emulator with the wrong key should learn the
right one from the answer; a key that is still a placeholder should not be sent anywhere at all. (The
``fal-flux-mcp emulator`` command and the README's fal-client example are in test_cli.py.)
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from mcp import Client
from pydantic import SecretStr

from fal_flux_mcp.emulator import DEFAULT_KEY, Emulator
from fal_flux_mcp.fal import AuthenticationError, FalClient, MissingCredentialsError, RetryPolicy
from fal_flux_mcp.server import build_server
from fal_flux_mcp.settings import Settings

pytestmark = pytest.mark.anyio

SCHNELL = "fal-ai/flux/schnell"
PLACEHOLDER = "<your fal key, key_id:key_secret, from fal.ai/dashboard/keys>"
FAST_RETRY = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.02)


async def test_the_401_says_which_key_the_emulator_accepts(emulator: Emulator) -> None:
    async with httpx.AsyncClient(base_url=emulator.url, headers={"Authorization": "Key a:b"}) as http:
        wrong = await http.post(f"/{SCHNELL}", json={"prompt": "x"})
        emulator.config.key = "team-id:team-secret"
        other = await http.post(f"/{SCHNELL}", json={"prompt": "x"})
        emulator.config.accept_any_key = True
        missing = await http.post(f"/{SCHNELL}", json={"prompt": "x"}, headers={"Authorization": ""})
    assert wrong.status_code == 401
    assert f"accepts the key {DEFAULT_KEY}; set FAL_KEY to it" in wrong.json()["detail"]
    assert "accepts the key team-id:team-secret" in other.json()["detail"]
    assert "accepts any key of the form id:secret" in missing.json()["detail"]


async def test_our_client_says_the_emulator_key_is_the_fix_when_fal_url_is_set(emulator: Emulator) -> None:
    settings = Settings(fal_key="my-real-id:my-real-secret", fal_url=emulator.url, retry_attempts=1)
    async with FalClient.from_settings(settings) as client:
        with pytest.raises(AuthenticationError) as raised:
            await client.submit(SCHNELL, {"prompt": "x"})
    message = raised.value.message
    assert "FLUX_MCP_FAL_URL" in message and DEFAULT_KEY in message and "emulator" in message
    assert "my-real-secret" not in message


@pytest.mark.parametrize("key", [PLACEHOLDER, "your fal key", "no-colon-at-all", "lonely-key-id:"])
async def test_a_key_that_cannot_be_one_is_never_sent(emulator: Emulator, key: str) -> None:
    async with FalClient(key, base_url=emulator.url, retry=FAST_RETRY) as client:
        with pytest.raises(MissingCredentialsError, match=r"fal\.ai/dashboard/keys") as raised:
            await client.submit(SCHNELL, {"prompt": "x"})
    assert "nothing was sent to fal" in raised.value.message and key not in raised.value.message
    assert sum(emulator.counters.values()) == 0


async def test_a_placeholder_key_makes_a_clear_tool_error_and_no_request(
    settings: Settings, emulator: Emulator
) -> None:
    settings.fal_key = SecretStr(PLACEHOLDER)
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("generate_image", {"prompt": "a fox", "model": SCHNELL})
        models = await client.call_tool("list_models", {})
    text = " ".join(getattr(block, "text", "") for block in result.content)
    assert result.is_error and "placeholder" in text and "fal.ai/dashboard/keys" in text
    assert not models.is_error  # the server is still useful without a key
    assert sum(emulator.counters.values()) == 0


async def test_a_key_with_a_trailing_newline_works(emulator: Emulator, tmp_path: Path) -> None:
    """A key pasted with its line break (``FAL_KEY=$(cat key.txt)``) is the key, not a transport error."""
    settings = Settings(
        fal_key=emulator.key + "\n",
        fal_url=emulator.url,
        output_dir=tmp_path / "out",
        state_dir=tmp_path / "state",
    )
    emulator.config.job_seconds = 0.05
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("generate_image", {"prompt": "x", "model": "fal-ai/flux/schnell"})
    assert not result.is_error and result.structured_content["status"] == "completed"


async def test_a_key_with_characters_no_header_can_carry_is_never_sent(
    emulator: Emulator, tmp_path: Path
) -> None:
    settings = Settings(
        fal_key=emulator.key + "\x7f",
        fal_url=emulator.url,
        output_dir=tmp_path / "o",
        state_dir=tmp_path / "s",
    )
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("generate_image", {"prompt": "x", "model": "fal-ai/flux/schnell"})
    text = " ".join(getattr(block, "text", "") for block in result.content)
    assert result.is_error and "cannot carry" in text and "nothing was sent" in text
    assert sum(emulator.counters.values()) == 0


async def test_each_key_is_an_account_that_sees_only_its_own_requests(emulator: Emulator) -> None:
    """As on fal: a request is found (status, result, cancel, history) only with its account's keys."""
    emulator.config.keys = ["alice-id:alice-secret", "bob-id:bob-secret"]
    alice = httpx.AsyncClient(base_url=emulator.url, headers={"Authorization": "Key alice-id:alice-secret"})
    bob = httpx.AsyncClient(base_url=emulator.url, headers={"Authorization": "Key bob-id:bob-secret"})
    async with alice, bob:
        submitted = (await alice.post(f"/{SCHNELL}", json={"prompt": "x"})).json()
        status_url, cancel_url = submitted["status_url"], submitted["cancel_url"]
        theirs = [
            await bob.get(status_url),
            await bob.put(cancel_url),
            await bob.get(submitted["response_url"]),
        ]
        own = await alice.get(status_url)
        window = {"endpoint_id": SCHNELL, "start": "2000-01-01T00:00:00Z"}
        histories = [
            (await client.get(f"{emulator.url}/v1/models/requests/by-endpoint", params=window)).json()[
                "items"
            ]
            for client in (alice, bob)
        ]
    assert [answer.status_code for answer in theirs] == [404, 404, 404]
    assert own.status_code == 200 and emulator.job(submitted["request_id"]).account == "alice-id"
    assert [item["request_id"] for item in histories[0]] == [submitted["request_id"]] and histories[1] == []
