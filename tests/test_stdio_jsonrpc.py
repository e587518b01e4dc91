"""Malformed JSON-RPC lines on stdio get a JSON-RPC error reply at once, and the session carries on.

The server runs as a real subprocess, ``fal-flux-mcp serve``; the tests speak to it line by line,
the way an MCP client does, and read its stdout in a thread with a bounded wait for each reply.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp_types import INVALID_REQUEST, PARSE_ERROR

from fal_flux_mcp.server import build_server
from fal_flux_mcp.server._stdio import check_line
from fal_flux_mcp.settings import Settings
from tests.stdio_peer import REPO, SERVER_COMMAND, StdioPeer

# The inputs an outside tester found, each sent as one line, with the error code and id expected back.
BAD_LINES = [
    pytest.param(
        rb'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"\ud800"}}',
        INVALID_REQUEST,
        1,
        id="lone-surrogate",
    ),
    pytest.param(
        b'{"jsonrpc":"2.0","id":' + b"9" * 5000 + b',"method":"ping"}',
        INVALID_REQUEST,
        None,
        id="5000-digit-id",
    ),
    pytest.param(
        b'{"jsonrpc":"2.0","id":2,"method":"ping","params":{"n":' + b"9" * 5000 + b"}}",
        INVALID_REQUEST,
        2,
        id="5000-digit-param",
    ),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, PARSE_ERROR, None, id="100k-nested-arrays"),
    pytest.param(b'{"a":' * 100_000 + b"1" + b"}" * 100_000, PARSE_ERROR, None, id="100k-nested-objects"),
    pytest.param(b'{"jsonrpc":"2.0","id":1.5,"method":"ping"}', INVALID_REQUEST, None, id="float-id"),
    pytest.param(b'{"jsonrpc":"1.0","id":4,"method":"ping"}', INVALID_REQUEST, 4, id="jsonrpc-1.0"),
    pytest.param(
        b'[{"jsonrpc":"2.0","id":5,"method":"ping"},{"jsonrpc":"2.0","id":6,"method":"ping"}]',
        INVALID_REQUEST,
        None,
        id="batch",
    ),
    # Neighbours of those: not JSON at all, a null id, and nesting JSON allows but the SDK's parser refuses.
    pytest.param(b"this is not json", PARSE_ERROR, None, id="not-json"),
    pytest.param(b'{"jsonrpc":"2.0","id":null,"method":"ping"}', INVALID_REQUEST, None, id="null-id"),
    pytest.param(
        b'{"jsonrpc":"2.0","id":"deep","method":"ping","params":{"x":' + b"[" * 500 + b"]" * 500 + b"}}",
        INVALID_REQUEST,
        "deep",
        id="500-nested-in-params",
    ),
]


def server_env(tmp_path: Path) -> dict[str, str]:
    """What the server needs on top of a clean environment: a key and its own folders."""
    (tmp_path / "state").mkdir(exist_ok=True)
    (tmp_path / "out").mkdir(exist_ok=True)
    return {
        "FAL_KEY": "a:b",
        "FLUX_MCP_STATE_DIR": str(tmp_path / "state"),
        "FLUX_MCP_OUTPUT_DIR": str(tmp_path / "out"),
    }


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[StdioPeer]:
    """A server past the MCP handshake; always stopped."""
    server = StdioPeer(server_env(tmp_path), tmp_path / "stderr.log")
    try:
        server.initialize()
        yield server
    finally:
        server.stop()


def assert_error(reply: dict[str, Any], code: int, request_id: object) -> None:
    assert "result" not in reply, reply
    assert reply["error"]["code"] == code, reply
    assert reply["id"] == request_id, reply
    assert reply["error"]["message"].startswith("Parse error" if code == PARSE_ERROR else "Invalid Request")


@pytest.mark.parametrize(("line", "code", "request_id"), BAD_LINES)
def test_bad_line_is_answered_and_the_session_goes_on(
    peer: StdioPeer, line: bytes, code: int, request_id: object
) -> None:
    peer.send(line)
    assert_error(peer.receive(), code, request_id)
    # The next thing on stdout is the ping's answer: the server is alive, and nothing of the bad line
    # (a batch's members, say) was run.
    assert peer.request("after", "ping") == {"jsonrpc": "2.0", "id": "after", "result": {}}


def test_bad_lines_in_a_row_then_tools_still_work(peer: StdioPeer) -> None:
    lines = [param.values[0] for param in BAD_LINES]
    assert peer.process.stdin is not None
    peer.process.stdin.write(b"".join(line + b"\n" for line in lines))  # all in one write
    peer.process.stdin.flush()
    for param in BAD_LINES:
        _, code, request_id = param.values
        assert_error(peer.receive(), code, request_id)
    tools = peer.request("tools", "tools/list", {})
    assert {tool["name"] for tool in tools["result"]["tools"]} >= {"generate_image", "list_models"}
    assert peer.stop() == 0, peer.stderr()


def test_replies_stay_whole_lines_among_the_servers_own(peer: StdioPeer) -> None:
    """Error replies and the SDK's answers share stdout without tearing a line; every one arrives."""
    count = 200
    burst = b"".join(
        json.dumps({"jsonrpc": "2.0", "id": f"p{n}", "method": "ping"}).encode()
        + b"\n"
        + json.dumps({"jsonrpc": "1.0", "id": f"b{n}", "method": "ping"}).encode()
        + b"\n"
        for n in range(count)
    )
    assert peer.process.stdin is not None
    peer.process.stdin.write(burst)
    peer.process.stdin.flush()
    replies = [peer.receive() for _ in range(2 * count)]  # receive() fails on any line that is not JSON
    assert {r["id"] for r in replies if "result" in r} == {f"p{n}" for n in range(count)}
    assert {r["id"] for r in replies if r.get("error", {}).get("code") == INVALID_REQUEST} == {
        f"b{n}" for n in range(count)
    }


def test_valid_notifications_and_blank_lines_get_no_reply(peer: StdioPeer) -> None:
    peer.send(b'{"jsonrpc":"2.0","method":"notifications/roots/list_changed"}')
    peer.send(b"")
    peer.send(b"   ")
    assert peer.request("after", "ping") == {"jsonrpc": "2.0", "id": "after", "result": {}}


@pytest.mark.parametrize(
    "line",
    [
        '{"jsonrpc":"2.0","id":1,"method":"ping"}',
        '{"jsonrpc":"2.0","id":"x","method":"tools/call","params":{"name":"n","arguments":{"p":"\\ud83d\\ude00"}}}',
        '{"jsonrpc":"2.0","method":"notifications/initialized"}',
        '{"jsonrpc":"2.0","id":3,"result":{}}',
        '{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}',
        '{"jsonrpc":"2.0","id":' + "9" * 4300 + ',"method":"ping"}',
    ],
    ids=["request", "emoji-pair", "notification", "response", "client-error-null-id", "4300-digit-id"],
)
def test_messages_the_sdk_takes_pass_unchanged(line: str) -> None:
    assert check_line(line) is None


@pytest.mark.anyio
async def test_mcp_client_session_over_the_same_command(tmp_path: Path) -> None:
    params = StdioServerParameters(
        command=SERVER_COMMAND[0], args=SERVER_COMMAND[1:], env=server_env(tmp_path), cwd=REPO
    )
    with (tmp_path / "stderr.log").open("w") as errlog:
        async with Client(stdio_client(params, errlog=errlog)) as client:
            listed = {tool.name for tool in (await client.list_tools()).tools}
            models = await client.call_tool("list_models", {})
    settings = Settings(fal_key="a:b", output_dir=tmp_path / "out", state_dir=tmp_path / "state")
    async with Client(build_server(settings)) as in_memory:  # the same (plain) client, in memory
        expected = {tool.name for tool in (await in_memory.list_tools()).tools}
    assert listed == expected and "generate_image" in listed
    assert not models.is_error and models.structured_content["models"]
