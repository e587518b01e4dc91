"""No paid mistakes: what a tool does not understand is an error in words, and nothing reaches fal.

Every call goes through a real MCP client to the server in memory, and the server talks to the fal
emulator over HTTP, whose request counters show that a refused call cost nothing.
"""

from __future__ import annotations

from typing import Any

import pytest
from mcp import Client
from mcp.types import CallToolResult

from fal_flux_mcp.emulator import Emulator
from fal_flux_mcp.server import build_server
from fal_flux_mcp.settings import Settings

pytestmark = pytest.mark.anyio


def text_of(result: CallToolResult) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


@pytest.mark.parametrize(
    ("tool", "arguments", "unknown", "nearest"),
    [
        ("generate_image", {"prompt": "a fox", "negative_prompt": "blurry"}, "negative_prompt", "prompt"),
        ("generate_image", {"prompt": "a fox", "aspectratio": "16:9"}, "aspectratio", "aspect_ratio"),
        ("submit_job", {"prompt": "a fox", "num_image": 2}, "num_image", "num_images"),
        ("check_status", {"job_id": "x", "wait": 5}, "wait", "wait_seconds"),
        ("cancel_job", {"job_id": "x", "force": True}, "force", None),
        ("upload_file", {"paht": "/tmp/a.png"}, "paht", "path"),
        ("list_models", {"verbose": True}, "verbose", None),
    ],
)
async def test_an_unknown_argument_is_an_error_naming_it_and_the_nearest_known_one(
    settings: Settings,
    emulator: Emulator,
    tool: str,
    arguments: dict[str, Any],
    unknown: str,
    nearest: str | None,
) -> None:
    async with Client(build_server(settings)) as client:
        result = await client.call_tool(tool, arguments)
    text = text_of(result)
    assert result.is_error
    assert f"no argument '{unknown}'" in text
    if nearest:
        assert f"did you mean '{nearest}'" in text
    assert "Nothing was sent to fal" in text
    assert sum(emulator.counters.values()) == 0


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"prompt": "x", "num_images": 9}, "num_images 9 is out of range; allowed: 1 to 4."),
        (
            {"prompt": "x", "aspect_ratio": "7:5"},
            "aspect_ratio '7:5' is not allowed; use one of '21:9', '16:9'",
        ),
        ({"prompt": "x", "safety_tolerance": 9}, "safety_tolerance '9' is not allowed; use one of '1', '2'"),
        ({"prompt": "x", "seed": "lucky"}, "seed 'lucky' is not a whole number."),
        ({"prompt": "x", "raw": "maybe"}, "raw 'maybe' is not true or false."),
        ({"prompt": "x", "guidance_scale": 25}, "guidance_scale 25 is out of range; allowed: 0 to 20."),
        ({"aspect_ratio": "1:1"}, "prompt is required: What the image should show"),
        (
            {"prompt": "x", "model": "fal-ai/flux-pro/v2"},
            "model 'fal-ai/flux-pro/v2' is not allowed; use one of",
        ),
    ],
)
async def test_a_bad_value_is_one_sentence_with_the_argument_the_value_and_what_is_allowed(
    settings: Settings, emulator: Emulator, arguments: dict[str, Any], expected: str
) -> None:
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("generate_image", arguments)
    text = text_of(result)
    assert result.is_error
    assert expected in text
    for pydantic_words in ("validation error", "pydantic", "Input should", "generate_imageArguments"):
        assert pydantic_words not in text
    assert emulator.counters["submit"] == 0


async def test_list_models_lists_only_arguments_the_tools_take(settings: Settings) -> None:
    async with Client(build_server(settings)) as client:
        listed = await client.call_tool("list_models", {})
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    accepted = set(tools["generate_image"].input_schema["properties"])
    for model in listed.structured_content["models"]:
        assert "sync_mode" not in model["parameters"]
        assert set(model["parameters"]) <= accepted, model["id"]


async def test_wait_limits_are_the_configured_ones_in_descriptions_schema_and_errors(
    settings: Settings,
) -> None:
    settings.wait_seconds = 7
    async with Client(build_server(settings)) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        too_long = await client.call_tool("check_status", {"job_id": "x", "wait_seconds": 45})
        instructions = client.instructions or ""
    wait = tools["check_status"].input_schema["properties"]["wait_seconds"]
    assert wait["maximum"] == 7 and "0-7 s" in wait["description"]
    assert "Waits up to 7 seconds" in tools["generate_image"].description
    assert "up to 7 s" in instructions and "45" not in instructions
    assert too_long.is_error and "wait_seconds 45 is out of range; allowed: 0 to 7." in text_of(too_long)


async def test_tool_descriptions_carry_no_docstring_indentation(settings: Settings) -> None:
    async with Client(build_server(settings)) as client:
        tools = (await client.list_tools()).tools
    for tool in tools:
        assert tool.description
        assert all(line == line.lstrip() for line in tool.description.splitlines()), tool.name


@pytest.mark.parametrize(
    ("tool", "arguments"),
    [
        (
            "generate_image",
            {"prompt": "x", "model": "fal-ai/flux-pro/kontext", "image_url": "/" + "a" * 1_000_000},
        ),
        ("upload_file", {"path": "/tmp/" + "b" * 1_000_000}),
        ("upload_file", {"data": "%" * 1_000_000}),
        ("check_status", {"job_id": "c" * 1_000_000}),
        ("generate_image", {"prompt": "x", "aspect_ratio": "d" * 1_000_000}),
    ],
)
async def test_an_error_about_a_huge_argument_quotes_only_a_little_of_it(
    settings: Settings, tool: str, arguments: dict[str, Any]
) -> None:
    async with Client(build_server(settings)) as client:
        result = await client.call_tool(tool, arguments)
    assert result.is_error
    assert len(text_of(result)) < 2_000, text_of(result)[:300]


def test_no_result_exceeds_one_megabyte() -> None:
    from mcp.types import ImageContent, TextContent

    from fal_flux_mcp.server._app import RESULT_LIMIT, fit_result

    huge = CallToolResult(
        content=[TextContent(text="x" * 900_000), ImageContent(data="A" * 400_000, mime_type="image/jpeg")],
        structured_content={"logs": ["line " * 100] * 5_000, "message": "y" * 600_000},
    )
    fitted = fit_result(huge)
    assert len(fitted.model_dump_json(by_alias=True, exclude_none=True)) <= RESULT_LIMIT
    assert "Previews were left out" in text_of(fitted)
    small = CallToolResult(content=[TextContent(text="ok")])
    assert fit_result(small) is small
