"""The web gallery, in a real headless Chromium: on the HTTP transport and from ``fal-flux-mcp gallery``.

Jobs are made through a real MCP client against the emulator; the browser must show their images (the
pixels, not only the tags), take a new job live, and nothing is served without the token.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from pydantic import SecretStr

from fal_flux_mcp.server import build_server, http_app
from fal_flux_mcp.server._http import HttpTransport
from fal_flux_mcp.settings import Settings
from tests.browser import browser_page, difference, spread, square
from tests.serving import serve
from tests.test_server_transports import server_env

pytestmark = pytest.mark.anyio

TOKEN = "gallery-token"


async def generate(
    origin: str, prompt: str, seed: int, model: str = "fal-ai/flux/schnell", **more: Any
) -> dict[str, Any]:
    """One generation through MCP over HTTP, with the token; returns the result and its first preview."""
    authorised = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"})
    async with authorised, Client(streamable_http_client(f"{origin}/mcp", http_client=authorised)) as client:
        result = await client.call_tool(
            "generate_image", {"prompt": prompt, "model": model, "seed": seed, **more}
        )
    assert not result.is_error and result.structured_content is not None
    preview = next(block for block in result.content if block.type == "image")
    return {**result.structured_content, "preview": base64.b64decode(preview.data)}


async def shows(page: Any, job: dict[str, Any]) -> None:
    """The grid shows the job's image: its card, alt text from the prompt, and the picture itself."""
    image = page.locator(f'.card[data-job="{job["job_id"]}"] img')
    await image.wait_for()
    await image.evaluate("img => img.decode()")
    assert await image.get_attribute("alt") == job["prompt"]
    shot = await image.screenshot()
    assert spread(shot) > 10, "the image area is blank"
    # The card crops to a square: compare with the preview cropped the same way.
    assert difference(shot, square(job["preview"])) < 12, "the image shown is not the job's image"


async def test_gallery_on_http_shows_jobs_updates_live_and_has_job_and_spend_pages(
    settings: Settings, tmp_path: Path
) -> None:
    settings.http_token = SecretStr(TOKEN)
    with serve(http_app(build_server(settings), "streamable-http")) as origin:
        first = await generate(origin, "a lighthouse on a cliff at dusk", 11)
        async with browser_page(tmp_path) as page:
            await page.goto(f"{origin}/gallery?token={TOKEN}")
            assert page.url == f"{origin}/gallery", "the token should leave the address bar"
            await shows(page, first)

            # A job that finishes while the page is open appears without a reload.
            await page.evaluate("window.notReloaded = true")
            second = await generate(origin, "a red fox in the snow", 12)
            await shows(page, second)
            assert await page.evaluate("window.notReloaded") is True
            assert await page.locator(".card").first.get_attribute("data-job") == second["job_id"]
            await page.get_by_role("status").filter(has_text="a red fox").wait_for()

            # Keyboard: the first image's link takes focus and Enter opens its job.
            await page.locator(".card a").first.focus()
            await page.keyboard.press("ArrowRight")
            focused = await page.evaluate("document.activeElement.closest('.card').dataset.job")
            assert focused == first["job_id"]
            await page.keyboard.press("Enter")
            await page.wait_for_url(f"**/gallery/jobs/{first['job_id']}*")
            full = page.locator("figure img")
            await full.evaluate("img => img.decode()")
            assert await full.evaluate("img => img.naturalWidth") == first["images"][0]["width"]
            assert difference(await full.screenshot(), first["preview"]) < 12
            call = json.loads(await page.locator("#call").inner_text())
            assert call == {
                "name": "generate_image",
                "arguments": call["arguments"] | {"prompt": first["prompt"], "seed": 11},
            }
            assert call["arguments"]["model"] == "fal-ai/flux/schnell"
            again = await generate(origin, **call["arguments"])  # the copied call works as it is
            assert again["seed"] == 11 and difference(again["preview"], first["preview"]) < 2
            assert "seed" in await page.locator(".arguments").inner_text()
            await page.get_by_role("heading", name="Logs").wait_for()
            await page.get_by_role("button", name="Copy as tool call").wait_for()

            await page.get_by_role("link", name="Spend").click()
            table = await page.locator("table").first.inner_text()
            assert "fal-ai/flux/schnell" in table and "$" in table


@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
async def test_gallery_refuses_requests_without_the_token(
    settings: Settings, transport: HttpTransport
) -> None:
    settings.http_token = SecretStr(TOKEN)
    with serve(http_app(build_server(settings), transport)) as origin:
        async with httpx.AsyncClient(base_url=origin) as http:
            for path in ("/gallery", "/gallery/spend", "/gallery/events", "/gallery/images/x/0"):
                refused = await http.get(path)
                assert refused.status_code == 401, path
                assert TOKEN not in refused.text
            wrong = await http.get("/gallery", params={"token": "guess"})
            assert wrong.status_code == 401
            header = await http.get("/gallery", headers={"Authorization": f"Bearer {TOKEN}"})
            assert header.status_code == 200
            # A page elsewhere (a rebound name) is refused even with the token.
            rebound = await http.get(
                "/gallery", headers={"Authorization": f"Bearer {TOKEN}", "Host": "evil.example.com"}
            )
            assert rebound.status_code == 421


@contextmanager
def gallery_command(settings: Settings) -> Iterator[str]:
    """``fal-flux-mcp gallery --no-browser`` running; yields the address it printed."""
    env = {**os.environ, **server_env(settings), "FLUX_MCP_HTTP_TOKEN": "configured-secret"}
    process = subprocess.Popen(
        [sys.executable, "-m", "fal_flux_mcp", "gallery", "--no-browser"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        yield process.stdout.readline().strip()
    finally:
        process.terminate()
        process.wait(10)


async def test_gallery_command_serves_the_journal_on_loopback(settings: Settings, tmp_path: Path) -> None:
    async with Client(build_server(settings)) as client:  # a stdio user's server writes the journal
        result = await client.call_tool(
            "generate_image", {"prompt": "a paper boat on a pond", "model": "fal-ai/flux/schnell", "seed": 3}
        )
    job = result.structured_content
    assert job is not None
    job["preview"] = base64.b64decode(next(b for b in result.content if b.type == "image").data)
    with gallery_command(settings) as url:
        assert url.startswith("http://127.0.0.1:") and "/gallery?token=" in url
        assert "configured-secret" not in url  # a fresh token per run; the configured one is never printed
        async with httpx.AsyncClient() as http:
            assert (await http.get(url.split("?")[0])).status_code == 401
        async with browser_page(tmp_path) as page:
            await page.goto(url)
            await shows(page, job)


def brightness(shot: bytes) -> float:
    import io

    from PIL import Image, ImageStat

    with Image.open(io.BytesIO(shot)) as image:
        return sum(ImageStat.Stat(image.convert("L")).mean)


async def test_gallery_follows_the_system_theme_and_the_theme_button(
    settings: Settings, tmp_path: Path
) -> None:
    with serve(http_app(build_server(settings), "streamable-http")) as origin:
        async with browser_page(tmp_path, color_scheme="dark") as page:
            await page.goto(f"{origin}/gallery")
            heading = page.get_by_role("heading", name="Recent images")
            assert brightness(await heading.screenshot()) < 80, "a dark system should get the dark theme"
            await page.get_by_role("button", name="Light theme").click()
            assert brightness(await heading.screenshot()) > 170
            await page.reload()  # the choice is remembered
            assert brightness(await heading.screenshot()) > 170
            # Keyboard users reach the content first.
            await page.keyboard.press("Tab")
            assert await page.evaluate("document.activeElement.textContent") == "Skip to content"
