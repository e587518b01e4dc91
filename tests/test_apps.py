"""The MCP App: served right, linked from the tools only for clients that can show it, and drawn in a browser.

The browser tests load the app the server serves into a page that plays the host (the Apps postMessage
bridge, the CSP the resource declares) in a real headless Chromium, and look at the pixels.
"""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.client.extension import advertise
from mcp.types import CallToolResult, TextResourceContents
from PIL import Image, ImageStat

from fal_flux_mcp.server import build_server
from fal_flux_mcp.settings import Settings
from tests.browser import browser_page, difference, spread, square

pytestmark = pytest.mark.anyio

APP_MIME = "text/html;profile=mcp-app"
JOB_APP = "ui://fal-flux-mcp/job"
GALLERY_APP = "ui://fal-flux-mcp/gallery"
HOST_PAGE = Path(__file__).with_name("app_host.html")


def apps_client(settings: Settings, mode: str = "auto") -> Client:
    """A client that advertises the Apps extension, as VS Code or Claude Desktop do."""
    ui = advertise("io.modelcontextprotocol/ui", {"mimeTypes": [APP_MIME]})
    return Client(build_server(settings), mode=mode, extensions=[ui])


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_tools_link_the_app_only_for_clients_that_advertise_apps(settings: Settings, mode: str) -> None:
    async with apps_client(settings, mode) as client:
        with_apps = {tool.name: tool for tool in (await client.list_tools()).tools}
        resources = {str(resource.uri) for resource in (await client.list_resources()).resources}
    async with Client(build_server(settings), mode=mode) as client:
        plain = {tool.name: tool for tool in (await client.list_tools()).tools}
        plain_resources = {str(resource.uri) for resource in (await client.list_resources()).resources}

    for name in ("generate_image", "edit_image", "check_status"):
        assert with_apps[name].meta == {"ui": {"resourceUri": JOB_APP}}
    assert with_apps["open_gallery"].meta == {"ui": {"resourceUri": GALLERY_APP}}
    assert {JOB_APP, GALLERY_APP} <= resources
    # Without the extension: the tools and resources as they were before Apps, no _meta at all.
    assert set(plain) == set(with_apps) - {"open_gallery"}  # it only opens the app
    assert all(tool.meta is None for tool in plain.values())
    assert not any(uri.startswith("ui://") for uri in plain_resources)
    for name, tool in plain.items():
        assert tool.input_schema == with_apps[name].input_schema
        assert tool.description == with_apps[name].description


async def test_app_resource_is_one_self_contained_html_file_with_its_csp(settings: Settings) -> None:
    async with apps_client(settings) as client:
        listed = {str(r.uri): r for r in (await client.list_resources()).resources}
        read = await client.read_resource(JOB_APP)
    (content,) = read.contents
    assert isinstance(content, TextResourceContents)
    assert content.mime_type == APP_MIME and listed[JOB_APP].mime_type == APP_MIME
    ui = (content.meta or {})["ui"]
    assert "https://*.fal.media" in ui["csp"]["resourceDomains"]
    html = content.text
    assert html.startswith("<!doctype html>") and "ui/initialize" in html
    # Nothing loaded from anywhere: no external script, stylesheet or font.
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=|@import|url\(", html)


async def test_a_client_without_apps_gets_the_same_result_as_before(settings: Settings) -> None:
    arguments = {"prompt": "a red fox", "model": "fal-ai/flux/schnell", "seed": 5}
    async with Client(build_server(settings)) as client:
        plain = await client.call_tool("generate_image", arguments)
    assert not plain.is_error and "ui" not in (plain.meta or {})
    assert [block.type for block in plain.content] == ["text", "image", "resource_link"]
    assert plain.structured_content is not None and plain.structured_content["status"] == "completed"


async def generated_for_app(settings: Settings, arguments: dict[str, Any]) -> tuple[CallToolResult, str, Any]:
    """A generation by an Apps client, with the app page and CSP that its tool links to."""
    async with apps_client(settings) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        uri = tools["generate_image"].meta["ui"]["resourceUri"]  # type: ignore[index]
        result = await client.call_tool("generate_image", arguments)
        (page,) = (await client.read_resource(uri)).contents
    assert isinstance(page, TextResourceContents) and not result.is_error
    return result, page.text, (page.meta or {})["ui"]["csp"]


async def start_app(
    page: Any, html: str, csp: Any, arguments: dict[str, Any], result: CallToolResult, theme: str = "light"
) -> Any:
    """The host page with the app running in it; returns the app's frame."""
    await page.set_content(HOST_PAGE.read_text())
    await page.evaluate(
        "startApp",
        {
            "html": html,
            "csp": csp,
            "toolInput": arguments,
            "toolResult": result.model_dump(by_alias=True, exclude_none=True, mode="json"),
            "theme": theme,
        },
    )
    return page.frame_locator("#app")


async def host_got(page: Any, method: str) -> list[dict[str, Any]]:
    """The app's requests of ``method`` that reached the host, once there is one."""
    await page.wait_for_function(f"window.received.some(m => m.method === {json.dumps(method)})")
    return [m for m in await page.evaluate("window.received") if m.get("method") == method]


async def test_job_app_draws_the_images_and_its_actions_reach_the_host(
    settings: Settings, tmp_path: Path
) -> None:
    arguments = {
        "prompt": "a lighthouse on a cliff",
        "model": "fal-ai/flux/schnell",
        "seed": 7,
        "num_images": 2,
    }
    result, html, csp = await generated_for_app(settings, arguments)
    job = result.structured_content
    assert job is not None
    previews = [base64.b64decode(block.data) for block in result.content if block.type == "image"]

    async with browser_page(tmp_path) as page:
        app = await start_app(page, html, csp, arguments, result)
        images = app.locator("figure img")
        await images.nth(1).wait_for()
        for index in range(2):
            image = images.nth(index)
            await image.evaluate("img => img.decode()")
            assert await image.get_attribute("alt") == f"a lighthouse on a cliff (image {index + 1})"
            shot = await image.screenshot()
            # The picture itself is on screen: it looks like the job's image, and is not blank.
            assert spread(shot) > 10, "the image area is blank"
            assert difference(shot, previews[index]) < 10, "the image shown is not the job's image"
        text = await app.locator("dl").inner_text()
        assert "fal-ai/flux/schnell" in text and "7" in text and "$" in text

        await app.get_by_role("button", name="Download").first.click()
        (download,) = await host_got(page, "ui/download-file")
        (link,) = download["params"]["contents"]
        assert link["type"] == "resource_link" and link["uri"] == job["images"][0]["url"]
        assert link["name"] == Path(job["images"][0]["path"]).name

        await app.get_by_role("button", name="Open full size").nth(1).click()
        (opened,) = await host_got(page, "ui/open-link")
        assert opened["params"]["url"] == job["images"][1]["url"]

        await app.get_by_role("button", name="Variation").first.click()
        (variation,) = await host_got(page, "ui/message")
        (said,) = variation["params"]["content"]
        assert variation["params"]["role"] == "user"
        assert job["job_id"] in said["text"] and "a lighthouse on a cliff" in said["text"]

        await app.get_by_role("button", name="Edit…").first.click()
        await app.get_by_role("textbox", name="What to change").fill("make it night")
        await app.get_by_role("button", name="Send").click()
        await page.wait_for_function("window.received.filter(m => m.method === 'ui/message').length === 2")
        messages = await host_got(page, "ui/message")
        edit_text = messages[1]["params"]["content"][0]["text"]
        assert "make it night" in edit_text and job["images"][0]["url"] in edit_text

        await app.get_by_role("button", name="Copy seed").click()
        await app.get_by_text("Seed 7").wait_for()


async def test_gallery_app_shows_recent_images_filters_by_model_and_shows_spend(
    settings: Settings, tmp_path: Path
) -> None:
    async with apps_client(settings) as client:
        made = []
        for prompt, model in (
            ("a paper boat", "fal-ai/flux/schnell"),
            ("a glass greenhouse", "fal-ai/flux/dev"),
        ):
            result = await client.call_tool("generate_image", {"prompt": prompt, "model": model, "seed": 9})
            preview = next(block for block in result.content if block.type == "image")
            made.append((result.structured_content, base64.b64decode(preview.data)))
        opened = await client.call_tool("open_gallery", {})
        (page_content,) = (await client.read_resource(GALLERY_APP)).contents
    assert not opened.is_error and opened.structured_content is not None
    assert [job["job_id"] for job in opened.structured_content["jobs"]] == [
        made[1][0]["job_id"],
        made[0][0]["job_id"],
    ]
    assert isinstance(page_content, TextResourceContents)
    csp = (page_content.meta or {})["ui"]["csp"]

    async with browser_page(tmp_path) as page:
        app = await start_app(page, page_content.text, csp, {}, opened)
        for job, preview in made:
            image = app.locator(f'li[data-job="{job["job_id"]}"] img')
            await image.evaluate("img => img.decode()")
            assert await image.get_attribute("alt") == job["prompt"]
            shot = await image.screenshot()
            assert spread(shot) > 10 and difference(shot, square(preview)) < 12
        await app.get_by_label("Model").select_option("fal-ai/flux/dev")
        await app.get_by_text("1 of 2 jobs shown").wait_for()
        assert await app.locator("#thumbs li").count() == 1
        assert "today" in await app.locator("#spend").inner_text()

        await app.get_by_role("button", name="Show a glass greenhouse").click()
        await app.get_by_role("button", name="Download").click()
        (download,) = await host_got(page, "ui/download-file")
        assert download["params"]["contents"][0]["uri"] == made[1][0]["images"][0]["url"]


async def test_job_app_takes_the_hosts_dark_theme(settings: Settings, tmp_path: Path) -> None:
    arguments = {"prompt": "a night sky", "model": "fal-ai/flux/schnell", "seed": 2}
    result, html, csp = await generated_for_app(settings, arguments)
    async with browser_page(tmp_path) as page:  # the browser itself is light: the host decides
        app = await start_app(page, html, csp, arguments, result, theme="dark")
        details = app.locator("dl")
        await details.wait_for()
        with Image.open(io.BytesIO(await details.screenshot())) as shot:
            assert ImageStat.Stat(shot.convert("L")).median[0] < 60, "the page should be dark"
