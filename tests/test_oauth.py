"""The HTTP transports as an OAuth resource server: JWTs from a test issuer whose JWKS a test server serves."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import Context
from pydantic import SecretStr, ValidationError

from fal_flux_mcp.server import build_server, http_app
from fal_flux_mcp.server._app import FluxServer
from fal_flux_mcp.server._identity import LOCAL_USER, current_user
from fal_flux_mcp.server._oauth import JWKS_REFRESH_INTERVAL_SECONDS
from fal_flux_mcp.settings import Settings
from tests.issuer import ISSUER, Issuer, running_issuer
from tests.serving import bind_free_port, serve
from tests.test_server_transports import INITIALIZE, MCP_HEADERS
from tests.test_settings import run_cli

pytestmark = pytest.mark.anyio


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    with running_issuer() as running:
        yield running


@pytest.fixture
def sock() -> socket.socket:
    return bind_free_port()


@pytest.fixture
def audience(sock: socket.socket) -> str:
    """The MCP endpoint's own URL, as the MCP spec has issuers put in ``aud``."""
    return f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"


@pytest.fixture
def oauth_settings(settings: Settings, issuer: Issuer, audience: str) -> Settings:
    return Settings(
        **{name: getattr(settings, name) for name in ("fal_key", "fal_url", "output_dir", "state_dir")},
        allowed_dirs=settings.allowed_dirs,
        wait_seconds=10,
        oauth_issuer=ISSUER,
        oauth_audience=audience,
        oauth_jwks_url=issuer.url,
    )


def with_whoami(server: FluxServer) -> FluxServer:
    """The server plus a tool that answers who the call is for, as the ownership checks will read it."""

    @server.tool()
    async def whoami(ctx: Context) -> str:  # type: ignore[type-arg]
        return repr(current_user(ctx))

    return server


async def whoami(client: Client) -> str:
    result = await client.call_tool("whoami", {})
    assert not result.is_error, result.content
    return result.content[0].text  # type: ignore[union-attr]


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_valid_token_lists_and_runs_tools_as_its_subject(
    oauth_settings: Settings, issuer: Issuer, audience: str, sock: socket.socket, mode: str
) -> None:
    server = with_whoami(build_server(oauth_settings))
    with serve(http_app(server, "streamable-http", port=sock.getsockname()[1]), sock) as origin:
        for subject in ("alice", "bob"):
            authorised = httpx2.AsyncClient(
                headers={"Authorization": f"Bearer {issuer.token(subject, aud=audience)}"}
            )
            async with (
                authorised,
                Client(streamable_http_client(f"{origin}/mcp", http_client=authorised), mode=mode) as client,
            ):
                listed = {tool.name for tool in (await client.list_tools()).tools}
                assert {"generate_image", "check_status", "whoami"} <= listed
                generated = await client.call_tool(
                    "generate_image", {"prompt": "a fox", "model": "fal-ai/flux/schnell"}
                )
                assert generated.structured_content["status"] == "completed", generated.content
                assert await whoami(client) == repr(subject)


async def test_an_es256_token_is_accepted_too(
    oauth_settings: Settings, issuer: Issuer, audience: str, sock: socket.socket
) -> None:
    issuer.add_key("ec1", kind="EC")
    server = with_whoami(build_server(oauth_settings))
    with serve(http_app(server, "streamable-http"), sock) as origin:
        token = issuer.token("carol", kid="ec1", alg="ES256", aud=audience)
        authorised = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"})
        async with (
            authorised,
            Client(streamable_http_client(f"{origin}/mcp", http_client=authorised)) as client,
        ):
            assert await whoami(client) == "'carol'"


def hs256(claims: dict[str, Any], secret: bytes) -> str:
    """An HS256 token made by hand: PyJWT rightly refuses to sign with a key that looks public."""

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signed = part(b'{"alg":"HS256","typ":"JWT","kid":"k1"}') + "." + part(json.dumps(claims).encode())
    return signed + "." + part(hmac.new(secret, signed.encode(), hashlib.sha256).digest())


def refused_tokens(issuer: Issuer, audience: str) -> dict[str, str | None]:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    now = int(time.time())
    return {
        "missing": None,
        "bad signature": issuer.token(aud=audience, key=other),
        "wrong audience": issuer.token(aud="http://127.0.0.1:1/other-server"),
        "wrong issuer": issuer.token(aud=audience, iss="https://evil.example.test"),
        "expired": issuer.token(aud=audience, exp=now - 120, iat=now - 600),
        "not yet valid": issuer.token(aud=audience, nbf=now + 600),
        "no subject": issuer.token("", aud=audience),
        "unknown key": issuer.token(aud=audience, kid="nobody", key=other),
        "alg none": jwt.encode(
            {"iss": ISSUER, "aud": audience, "sub": "eve", "exp": now + 300}, None, algorithm="none"
        ),
        # The issuer's public key used as an HMAC secret: the classic algorithm confusion.
        "hs256": hs256(
            {"iss": ISSUER, "aud": audience, "sub": "eve", "exp": now + 300},
            json.dumps(issuer.published[0]).encode(),
        ),
        "key of another type": issuer.token(aud=audience, alg="ES256", key=ec_key),
        "not a jwt": "let-me-in",
    }


CASES = [
    "missing",
    "bad signature",
    "wrong audience",
    "wrong issuer",
    "expired",
    "not yet valid",
    "no subject",
    "unknown key",
    "alg none",
    "hs256",
    "key of another type",
    "not a jwt",
]


@pytest.mark.parametrize("case", CASES)
async def test_a_bad_token_is_refused_with_401_and_never_logged(
    oauth_settings: Settings,
    issuer: Issuer,
    audience: str,
    sock: socket.socket,
    case: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    tokens = refused_tokens(issuer, audience)
    assert sorted(tokens) == sorted(CASES)
    token = tokens[case]
    headers = {**MCP_HEADERS, **({"Authorization": f"Bearer {token}"} if token else {})}
    with serve(http_app(build_server(oauth_settings), "streamable-http"), sock) as origin:
        async with httpx.AsyncClient() as http:
            answer = await http.post(f"{origin}/mcp", json=INITIALIZE, headers=headers)
    assert answer.status_code == 401, answer.text
    challenge = answer.headers["www-authenticate"]
    assert challenge.startswith("Bearer ") and 'error="invalid_token"' in challenge
    assert f'resource_metadata="{origin}/.well-known/oauth-protected-resource/mcp"' in challenge
    assert answer.json()["error"] == "invalid_token"
    if token:
        assert token not in caplog.text and token not in answer.text


async def test_the_protected_resource_metadata_names_the_issuer(
    oauth_settings: Settings, audience: str, sock: socket.socket
) -> None:
    with serve(http_app(build_server(oauth_settings), "streamable-http"), sock) as origin:
        async with httpx.AsyncClient() as http:
            answer = await http.get(f"{origin}/.well-known/oauth-protected-resource/mcp")
    assert answer.status_code == 200
    metadata = answer.json()
    assert metadata["resource"] == audience
    assert metadata["authorization_servers"] == [ISSUER]


async def test_a_rotated_key_is_fetched_once_and_forged_kids_do_not_hammer_the_issuer(
    oauth_settings: Settings, issuer: Issuer, audience: str, sock: socket.socket
) -> None:
    assert JWKS_REFRESH_INTERVAL_SECONDS >= 5  # the test's forged tokens all fall within one interval
    with serve(http_app(build_server(oauth_settings), "streamable-http"), sock) as origin:
        async with httpx.AsyncClient() as http:

            async def status(token: str) -> int:
                headers = {**MCP_HEADERS, "Authorization": f"Bearer {token}"}
                return (await http.post(f"{origin}/mcp", json=INITIALIZE, headers=headers)).status_code

            assert await status(issuer.token(aud=audience)) == 200
            assert await status(issuer.token(aud=audience)) == 200
            assert issuer.fetches == 1  # kept, not fetched per request
            issuer.add_key("k2")  # the issuer rotates: a token signed with its new key is taken at once
            assert await status(issuer.token(kid="k2", aud=audience)) == 200
            assert issuer.fetches == 2
            for n in range(5):
                other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
                assert await status(issuer.token(aud=audience, kid=f"forged-{n}", key=other)) == 401
            assert issuer.fetches == 2  # the look for k2 was this interval's one: forged kids cause none
            assert await status(issuer.token(aud=audience)) == 200


async def test_clocks_a_few_seconds_apart_are_forgiven(
    oauth_settings: Settings, issuer: Issuer, audience: str, sock: socket.socket
) -> None:
    now = int(time.time())
    with serve(http_app(build_server(oauth_settings), "streamable-http"), sock) as origin:
        async with httpx.AsyncClient() as http:
            for skewed in (issuer.token(aud=audience, exp=now - 5), issuer.token(aud=audience, nbf=now + 5)):
                headers = {**MCP_HEADERS, "Authorization": f"Bearer {skewed}"}
                assert (await http.post(f"{origin}/mcp", json=INITIALIZE, headers=headers)).status_code == 200


async def test_an_unreachable_issuer_refuses_with_401_not_an_error(
    oauth_settings: Settings, issuer: Issuer, audience: str, sock: socket.socket
) -> None:
    closed = bind_free_port()
    dead = f"http://127.0.0.1:{closed.getsockname()[1]}/jwks.json"
    closed.close()
    settings = oauth_settings.model_copy(update={"oauth_jwks_url": dead})
    with serve(http_app(build_server(settings), "streamable-http"), sock) as origin:
        async with httpx.AsyncClient() as http:
            headers = {**MCP_HEADERS, "Authorization": f"Bearer {issuer.token(aud=audience)}"}
            answer = await http.post(f"{origin}/mcp", json=INITIALIZE, headers=headers)
    assert answer.status_code == 401 and "invalid_token" in answer.headers["www-authenticate"]


async def test_sse_takes_the_same_tokens(
    oauth_settings: Settings, issuer: Issuer, sock: socket.socket
) -> None:
    port = sock.getsockname()[1]
    settings = oauth_settings.model_copy(
        update={"oauth_audience": "team-images"}
    )  # not a URL: the address is
    server = with_whoami(build_server(settings))
    with serve(http_app(server, "sse", port=port), sock) as origin:
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{origin}/sse")).status_code == 401
            metadata = (await http.get(f"{origin}/.well-known/oauth-protected-resource/sse")).json()
        assert metadata["resource"] == f"{origin}/sse"
        headers = {"Authorization": f"Bearer {issuer.token('dan', aud='team-images')}"}
        async with Client(sse_client(f"{origin}/sse", headers=headers), mode="legacy") as client:
            assert await whoami(client) == "'dan'"


async def test_the_gallery_is_not_served_under_oauth(oauth_settings: Settings, sock: socket.socket) -> None:
    with serve(http_app(build_server(oauth_settings), "streamable-http"), sock) as origin:
        async with httpx.AsyncClient() as http:
            answer = await http.get(f"{origin}/gallery")
    assert answer.status_code == 404 and "OAuth" in answer.text


def test_oauth_may_serve_a_network_address(oauth_settings: Settings) -> None:
    http_app(build_server(oauth_settings), "streamable-http", host="0.0.0.0", port=8000)


async def test_without_oauth_every_call_is_the_local_user(settings: Settings) -> None:
    async with Client(with_whoami(build_server(settings))) as client:
        assert await whoami(client) == repr(LOCAL_USER)
    settings.http_token = SecretStr("let-me-in")
    with serve(http_app(with_whoami(build_server(settings)), "streamable-http")) as origin:
        authorised = httpx2.AsyncClient(headers={"Authorization": "Bearer let-me-in"})
        async with (
            authorised,
            Client(streamable_http_client(f"{origin}/mcp", http_client=authorised)) as client,
        ):
            assert await whoami(client) == repr(LOCAL_USER)


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"oauth_issuer": ISSUER}, "FLUX_MCP_OAUTH_AUDIENCE and FLUX_MCP_OAUTH_JWKS_URL missing"),
        ({"oauth_audience": "a", "oauth_jwks_url": "https://i/jwks"}, "FLUX_MCP_OAUTH_ISSUER missing"),
        (
            {
                "oauth_issuer": ISSUER,
                "oauth_audience": "a",
                "oauth_jwks_url": "https://i/j",
                "http_token": "t",
            },
            "FLUX_MCP_HTTP_TOKEN and the OAuth settings are exclusive",
        ),
        ({"oauth_jwks_url": "http://issuer.example.test/jwks"}, "not an https URL"),
        ({"oauth_issuer": "issuer.example.test"}, "not an http(s) URL"),
    ],
)
def test_oauth_settings_go_together(given: dict[str, str], named: str) -> None:
    with pytest.raises(ValidationError, match=named.replace("(", r"\(").replace(")", r"\)")):
        Settings(**given)


def test_serve_stops_at_start_on_half_an_oauth_configuration(tmp_path: Path) -> None:
    env = {"FLUX_MCP_OAUTH_ISSUER": ISSUER, "FLUX_MCP_OAUTH_JWKS_URL": "https://issuer.example.test/jwks"}
    completed = run_cli("serve", "--transport", "streamable-http", env=env, home=tmp_path)
    assert completed.returncode == 2 and "Traceback" not in completed.stderr
    assert (
        "FLUX_MCP_OAUTH_AUDIENCE missing" in completed.stderr and "set all three or none" in completed.stderr
    )
