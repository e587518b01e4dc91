"""Every tool on every transport: stdio (a real subprocess), Streamable HTTP and SSE, plus HTTP safety."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import anyio
import httpx
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.sse import sse_client
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from pydantic import SecretStr

from fal_flux_mcp.registry import MODELS
from fal_flux_mcp.server import UnsafeBindError, build_server, http_app
from fal_flux_mcp.server._http import HttpTransport
from fal_flux_mcp.settings import Settings
from tests.samples import image_bytes
from tests.serving import bind_free_port, serve

pytestmark = pytest.mark.anyio


def server_env(settings: Settings) -> dict[str, str]:
    assert settings.fal_key is not None and settings.fal_url is not None
    return {
        "FAL_KEY": settings.fal_key.get_secret_value(),
        "FLUX_MCP_FAL_URL": settings.fal_url,
        "FLUX_MCP_OUTPUT_DIR": str(settings.output_dir),
        "FLUX_MCP_STATE_DIR": str(settings.state_dir),
        "FLUX_MCP_ALLOWED_DIRS": str(settings.allowed_dirs[0]),
        "FLUX_MCP_LOG_LEVEL": "DEBUG",
    }


ClientFactory = Callable[[], AbstractAsyncContextManager[Client]]


async def exercise_every_tool(client: Client, picture: Path) -> set[str]:
    """Call each listed tool the way a model would; returns the names called."""
    listed = {tool.name for tool in (await client.list_tools()).tools}
    progress: list[str] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(message or "")

    generated = await client.call_tool(
        "generate_image", {"prompt": "a fox", "model": "fal-ai/flux/schnell"}, progress_callback=on_progress
    )
    assert generated.structured_content["status"] == "completed", generated.content
    assert await anyio.Path(generated.structured_content["images"][0]["path"]).is_file()
    assert progress, "progress notifications should arrive on every transport"

    submitted = await client.call_tool("submit_job", {"prompt": "a fox", "model": "fal-ai/flux/dev"})
    job_id = submitted.structured_content["job_id"]
    status = await client.call_tool("check_status", {"job_id": job_id})
    assert status.structured_content["job_id"] == job_id
    cancelled = await client.call_tool("cancel_job", {"job_id": job_id})
    assert not cancelled.is_error and cancelled.structured_content["job_id"] == job_id

    uploaded = await client.call_tool("upload_file", {"path": str(picture)})
    assert not uploaded.is_error and uploaded.structured_content["url"].startswith("http")
    edited = await client.call_tool(
        "edit_image",
        {
            "prompt": "make it brighter",
            "image_url": generated.structured_content["images"][0]["resource_uri"],
        },
    )
    assert edited.structured_content["status"] == "completed", edited.content
    assert "fal-ai/flux-pro/kontext" in edited.structured_content["model_choice"]
    models = await client.call_tool("list_models", {})
    assert len(models.structured_content["models"]) == len(MODELS)
    spend = await client.call_tool("get_spend", {})
    assert not spend.is_error and spend.structured_content["periods"][0]["period"] == "today"

    called = {
        "generate_image",
        "edit_image",
        "submit_job",
        "check_status",
        "cancel_job",
        "upload_file",
        "list_models",
        "get_spend",
    }
    assert listed == called, f"tools listed but not exercised (or the reverse): {listed ^ called}"
    return called


@pytest.fixture
def picture(settings: Settings) -> Path:
    path = settings.allowed_dirs[0] / "input.png"
    path.write_bytes(image_bytes(size=(32, 32)))
    return path


async def test_stdio_subprocess_serves_every_tool(settings: Settings, picture: Path, tmp_path: Path) -> None:
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "fal_flux_mcp", "serve"], env=server_env(settings)
    )
    with (tmp_path / "stderr.log").open("w+") as errlog:
        async with Client(stdio_client(params, errlog=errlog)) as client:
            await exercise_every_tool(client, picture)
        errlog.seek(0)
        logged = errlog.read()
    assert settings.fal_key is not None
    assert settings.fal_key.get_secret_value() not in logged


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_streamable_http_serves_every_tool(settings: Settings, picture: Path, mode: str) -> None:
    with serve(http_app(build_server(settings), "streamable-http")) as origin:
        async with Client(f"{origin}/mcp", mode=mode) as client:
            await exercise_every_tool(client, picture)


async def test_sse_serves_every_tool(settings: Settings, picture: Path) -> None:
    with serve(http_app(build_server(settings), "sse")) as origin:
        async with Client(sse_client(f"{origin}/sse"), mode="legacy") as client:
            await exercise_every_tool(client, picture)


async def test_http_token_is_required_when_configured(settings: Settings) -> None:
    settings.http_token = SecretStr("let-me-in")
    with serve(http_app(build_server(settings), "streamable-http")) as origin:
        async with httpx.AsyncClient() as http:
            answer = await http.post(f"{origin}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
            assert answer.status_code == 401 and "Bearer" in answer.headers["www-authenticate"]
            wrong = await http.post(f"{origin}/mcp", json={}, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
        authorised = httpx2.AsyncClient(headers={"Authorization": "Bearer let-me-in"})
        async with (
            authorised,
            Client(streamable_http_client(f"{origin}/mcp", http_client=authorised)) as client,
        ):
            assert len((await client.list_tools()).tools) == 8


async def test_dns_rebinding_protection_on_loopback(settings: Settings) -> None:
    with serve(http_app(build_server(settings), "streamable-http")) as origin:
        async with httpx.AsyncClient() as http:
            answer = await http.post(
                f"{origin}/mcp",
                json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                headers={"Host": "evil.example.com", "Accept": "application/json, text/event-stream"},
            )
    assert answer.status_code == 421


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "test", "version": "0"},
    },
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream"}


def _loopback_available(host: str) -> bool:
    try:
        bind_free_port(host).close()
    except OSError:
        return False
    return True


@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
@pytest.mark.parametrize("host", ["127.0.0.2", "127.42.0.1", "::1"])
async def test_every_loopback_bind_refuses_rebound_hosts_and_origins(
    settings: Settings, transport: HttpTransport, host: str
) -> None:
    if not _loopback_available(host):
        pytest.skip(f"{host} cannot be bound here")
    sock = bind_free_port(host)
    port = sock.getsockname()[1]
    path = "/mcp" if transport == "streamable-http" else "/sse"
    own_host = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    with serve(http_app(build_server(settings), transport, host=host, port=port), sock) as origin:
        async with httpx.AsyncClient(base_url=origin) as http:

            async def answer(headers: dict[str, str]) -> int:
                if transport == "sse":  # a refusal is a plain answer; an accepted GET would open the stream
                    async with http.stream("GET", path, headers=headers) as response:
                        return response.status_code
                return (await http.post(path, json=INITIALIZE, headers=MCP_HEADERS | headers)).status_code

            assert await answer({"Host": "evil.example"}) == 421
            assert await answer({"Host": f"evil.example:{port}"}) == 421
            if host != "::1":  # 'localhost' names ::1 and 127.0.0.1, no other loopback address
                assert await answer({"Host": f"localhost:{port}"}) == 421
            assert await answer({"Origin": "http://evil.example"}) == 403
            assert await answer({"Origin": f"http://{own_host.rsplit(':', 1)[0]}:{port + 1}"}) == 403
        # The real address still works, for a real client, with the browser-style Origin too.
        origin_headers = {"Origin": f"http://{own_host}"}
        if transport == "sse":
            factory = sse_client(f"{origin}/sse", headers=origin_headers)
            async with Client(factory, mode="legacy") as client:
                assert len((await client.list_tools()).tools) == 8
        else:
            http2 = httpx2.AsyncClient(headers=origin_headers)
            async with http2, Client(streamable_http_client(f"{origin}/mcp", http_client=http2)) as client:
                assert len((await client.list_tools()).tools) == 8


@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
async def test_localhost_aliases_of_127_0_0_1_pass_only_on_the_served_port(
    settings: Settings, transport: HttpTransport
) -> None:
    sock = bind_free_port("127.0.0.1")
    port = sock.getsockname()[1]
    with serve(http_app(build_server(settings), transport, port=port), sock) as origin:
        async with httpx.AsyncClient(base_url=origin) as http:

            async def answer(headers: dict[str, str]) -> int:
                if transport == "sse":
                    async with http.stream("GET", "/sse", headers=headers) as response:
                        return response.status_code
                return (await http.post("/mcp", json=INITIALIZE, headers=MCP_HEADERS | headers)).status_code

            for alias in (f"127.0.0.1:{port}", f"localhost:{port}"):
                assert await answer({"Host": alias, "Origin": f"http://{alias}"}) == 200
            assert await answer({"Host": f"localhost:{port + 1}"}) == 421
            assert await answer({"Origin": f"http://localhost:{port + 1}"}) == 403


def test_binding_a_network_address_without_a_token_is_refused(settings: Settings) -> None:
    with pytest.raises(UnsafeBindError, match="FLUX_MCP_HTTP_TOKEN"):
        http_app(build_server(settings), "streamable-http", host="0.0.0.0")
    settings.http_token = SecretStr("t")
    http_app(build_server(settings), "streamable-http", host="0.0.0.0")  # with a token it is allowed


def test_cli_refuses_an_open_network_bind(settings: Settings) -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "fal_flux_mcp",
            "serve",
            "--transport",
            "streamable-http",
            "--host",
            "0.0.0.0",
        ],
        env={**server_env(settings), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 2
    assert "FLUX_MCP_HTTP_TOKEN" in completed.stderr and completed.stdout == ""


async def test_the_printed_client_config_launches_the_server(settings: Settings) -> None:
    printed = await anyio.run_process([sys.executable, "-m", "fal_flux_mcp", "config"], check=True)
    entry = json.loads(printed.stdout)["mcpServers"]["flux"]
    assert Path(entry["command"]).is_absolute() and "FAL_KEY" in entry["env"]
    env = {**entry["env"], **server_env(settings)}
    params = StdioServerParameters(command=entry["command"], args=entry["args"], env=env)
    async with Client(params) as client:
        assert len((await client.list_tools()).tools) == 8
