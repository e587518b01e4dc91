"""What clients rely on: flat, described, bounded schemas; honest annotations; and the key never leaking."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from mcp import Client

from fal_flux_mcp.emulator import Emulator
from fal_flux_mcp.registry import MODELS
from fal_flux_mcp.server import build_server
from fal_flux_mcp.settings import Settings
from tests.samples import image_bytes

pytestmark = pytest.mark.anyio

SECRET = "leakcheck-id-7f3a:leakcheck-secret-91b2c4"


async def test_every_input_schema_is_flat_and_described(settings: Settings) -> None:
    async with Client(build_server(settings)) as client:
        tools = (await client.list_tools()).tools
    assert {t.name for t in tools} == {
        "generate_image",
        "edit_image",
        "submit_job",
        "check_status",
        "cancel_job",
        "upload_file",
        "list_models",
        "get_spend",
    }
    for tool in tools:
        schema = tool.input_schema
        assert schema["type"] == "object"
        assert not {"oneOf", "anyOf", "allOf", "$ref"} & set(schema), tool.name
        assert tool.description and tool.title, tool.name
        for name, prop in schema.get("properties", {}).items():
            assert prop.get("description"), f"{tool.name}.{name} has no description"
            assert "$ref" not in prop and "anyOf" not in prop, f"{tool.name}.{name} is not a plain type"


async def test_enums_and_bounds_follow_fal(settings: Settings) -> None:
    async with Client(build_server(settings)) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    props = tools["generate_image"].input_schema["properties"]
    assert tools["generate_image"].input_schema["required"] == ["prompt"]
    assert props["model"]["enum"][0] == "fal-ai/flux-pro/v1.1-ultra" and len(props["model"]["enum"]) == len(
        MODELS
    )
    assert props["aspect_ratio"]["enum"] == [
        "21:9",
        "16:9",
        "4:3",
        "3:2",
        "1:1",
        "2:3",
        "3:4",
        "9:16",
        "9:21",
    ]
    assert props["safety_tolerance"]["enum"] == ["1", "2", "3", "4", "5", "6"]
    assert (props["num_images"]["minimum"], props["num_images"]["maximum"]) == (1, 4)
    assert (props["guidance_scale"]["minimum"], props["guidance_scale"]["maximum"]) == (0, 20)  # flash: 0
    assert (props["image_prompt_strength"]["minimum"], props["image_prompt_strength"]["maximum"]) == (0, 1)
    assert "webhook_url" in tools["submit_job"].input_schema["properties"]
    assert "webhook_url" not in props
    check = tools["check_status"].input_schema["properties"]["wait_seconds"]
    assert (check["minimum"], check["maximum"]) == (0, settings.wait_seconds)


async def test_annotations_tell_clients_what_is_safe_to_auto_approve(settings: Settings) -> None:
    async with Client(build_server(settings)) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    for name in ("check_status", "list_models"):
        assert tools[name].annotations.read_only_hint is True, name
    for name in ("generate_image", "edit_image", "submit_job"):
        hints = tools[name].annotations
        assert (
            hints.read_only_hint is False and hints.open_world_hint is True and hints.idempotent_hint is False
        )
    for name in ("generate_image", "edit_image", "submit_job", "check_status"):
        assert tools[name].output_schema and "job_id" in tools[name].output_schema["properties"]


async def test_the_key_appears_in_no_result_resource_log_journal_or_file(
    settings: Settings, emulator: Emulator, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    emulator.config.key = SECRET
    emulator.config.job_seconds = 0.05
    settings = settings.model_copy(update={"fal_key": type(settings.fal_key)(SECRET)})
    picture = settings.allowed_dirs[0] / "in.png"
    picture.write_bytes(image_bytes())
    seen: list[str] = []
    caplog.set_level(logging.DEBUG)
    async with Client(build_server(settings)) as client:
        calls = [
            ("generate_image", {"prompt": "a boat", "model": "fal-ai/flux/schnell"}),
            ("generate_image", {"prompt": "a forbidden boat", "model": "fal-ai/flux/dev"}),
            (
                "generate_image",
                {"prompt": "x", "model": "fal-ai/flux-pro/kontext", "image_url": str(picture)},
            ),
            ("edit_image", {"prompt": "make it brighter", "image_urls": [str(picture), str(picture)]}),
            ("submit_job", {"prompt": "a car", "model": "fal-ai/flux/schnell"}),
            ("upload_file", {"path": str(picture)}),
            ("upload_file", {"path": "/etc/passwd"}),
            ("check_status", {"job_id": "unknown"}),
            ("list_models", {}),
            ("get_spend", {}),
        ]
        for name, arguments in calls:
            result = await client.call_tool(name, arguments)
            seen.append(result.model_dump_json())
            job_id = (result.structured_content or {}).get("job_id")
            if job_id:
                seen.append(
                    (
                        await client.call_tool("check_status", {"job_id": job_id, "wait_seconds": 5})
                    ).model_dump_json()
                )
                seen.append((await client.read_resource(f"flux://jobs/{job_id}")).model_dump_json())
        seen.append((await client.list_resources()).model_dump_json())
    emulator.config.key = (
        "another:key"  # now every call is refused: the 401 path must not echo the key either
    )
    async with Client(build_server(settings)) as client:
        seen.append((await client.call_tool("generate_image", {"prompt": "x"})).model_dump_json())

    secret_parts = [SECRET, SECRET.split(":")[1]]
    for text in seen:
        assert not any(part in text for part in secret_parts)
    assert not any(part in caplog.text for part in secret_parts)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".sqlite3" for p in files) and any(p.suffix == ".jpg" for p in files)
    for path in files:
        data = path.read_bytes()
        assert not any(part.encode() in data for part in secret_parts), path
