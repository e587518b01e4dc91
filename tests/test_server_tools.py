"""The MCP tools through a real MCP client (in memory, both protocol eras) against the fal emulator."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.shared.subscriptions import ResourcesListChanged
from mcp.types import CallToolResult, ListRootsResult, Root
from PIL import Image

from fal_flux_mcp.emulator import Emulator
from fal_flux_mcp.registry import MODELS
from fal_flux_mcp.server import build_server
from fal_flux_mcp.settings import Settings
from tests.samples import image_bytes

pytestmark = pytest.mark.anyio

MODES = ["auto", "legacy"]


def text_of(result: CallToolResult) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


def blocks(result: CallToolResult, kind: str) -> list[Any]:
    return [block for block in result.content if block.type == kind]


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


async def test_generate_image_returns_previews_links_files_and_structured_output(
    settings: Settings, emulator: Emulator, mode: str
) -> None:
    emulator.config.job_seconds = 0.3
    messages: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    async with Client(build_server(settings), mode=mode) as client:
        result = await client.call_tool(
            "generate_image",
            {"prompt": "a lighthouse at dusk", "aspect_ratio": "1:1", "seed": 3},
            progress_callback=on_progress,
        )
    assert not result.is_error, text_of(result)
    data = result.structured_content
    assert (
        data["status"] == "completed" and data["seed"] == 3 and data["model"] == "fal-ai/flux-pro/v1.1-ultra"
    )
    assert data["cost_usd"] == pytest.approx(0.06)
    assert data["completed_at"] and data["completed_at"] >= data["created_at"]
    (image,) = data["images"]
    assert (image["width"], image["height"]) == (2048, 2048)
    saved = Path(image["path"])
    assert saved.is_file() and saved.parent == settings.output_dir
    assert "lighthouse" in saved.name
    assert image["url"] in text_of(result) and image["path"] in text_of(result)
    (preview,) = blocks(result, "image")
    with Image.open(io.BytesIO(base64.b64decode(preview.data))) as shown:
        assert shown.format == "JPEG" and max(shown.size) <= 1024
    (link,) = blocks(result, "resource_link")
    assert str(link.uri) == f"flux://images/{data['job_id']}/0"
    assert any("Submitted" in m for m in messages) and any(m.startswith("fal:") for m in messages)


async def test_four_ultra_images_fit_under_one_megabyte(settings: Settings, emulator: Emulator) -> None:
    emulator.config.job_seconds = 0.1
    async with Client(build_server(settings)) as client:
        result = await client.call_tool(
            "generate_image",
            {"prompt": "busy detailed city market, noise", "num_images": 4, "output_format": "png"},
        )
    assert not result.is_error, text_of(result)
    assert len(blocks(result, "image")) == 4
    assert len(result.model_dump_json(by_alias=True)) < 1_000_000
    assert all(Path(i["path"]).suffix == ".png" for i in result.structured_content["images"])


async def test_a_slow_job_hands_back_a_job_id_then_check_status_delivers(
    settings: Settings, emulator: Emulator, mode: str
) -> None:
    emulator.config.job_seconds = 1.5
    settings.wait_seconds = 0.3
    async with Client(build_server(settings), mode=mode) as client:
        first = await client.call_tool("generate_image", {"prompt": "x", "model": "fal-ai/flux/schnell"})
        assert not first.is_error
        job_id = first.structured_content["job_id"]
        assert first.structured_content["status"] in ("queued", "in_progress")
        assert (
            "check_status" in first.structured_content["message"]
            and job_id in first.structured_content["message"]
        )
        polls = 0
        with anyio.fail_after(10):  # what an agent does: check_status, each call waiting up to the cap
            while (
                done := await client.call_tool("check_status", {"job_id": job_id, "wait_seconds": 0.3})
            ).structured_content["status"] != "completed":
                assert done.structured_content["status"] == "in_progress", text_of(done)
                polls += 1
        assert polls >= 1  # the 0.3 s limit held: one call could not wait for the whole 1.5 s job
        again = await client.call_tool("check_status", {"job_id": job_id})
    assert again.structured_content == done.structured_content
    assert len(blocks(again, "image")) == 1
    assert emulator.counters["submit"] == 1


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"prompt": "x", "image_size": "square"}, "does not take image_size"),
        (
            {"prompt": "x", "model": "fal-ai/flux/dev", "raw": True},
            "It takes: prompt, model, aspect_ratio, image_size",
        ),
        ({"prompt": "", "model": "fal-ai/flux-pro/v1.1-ultra/redux"}, "pass image_url"),
        ({"prompt": "x", "num_images": 9}, "allowed: 1 to 4"),
        ({"prompt": "x", "model": "fal-ai/flux-pro/v2"}, "model"),
        ({"prompt": "x", "model": "fal-ai/flux/schnell", "num_inference_steps": 30}, "num_inference_steps"),
        (
            {"prompt": "x", "model": "fal-ai/flux-pro/v1.1", "aspect_ratio": "1:1", "image_size": "square"},
            "not both",
        ),
        ({"prompt": "x", "image_url": "/etc/passwd"}, "allowed"),
    ],
)
async def test_bad_input_is_an_actionable_tool_error_and_costs_nothing(
    settings: Settings, emulator: Emulator, arguments: dict[str, Any], expected: str
) -> None:
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("generate_image", arguments)
    assert result.is_error
    assert expected in text_of(result)
    assert emulator.counters["submit"] == 0


async def test_content_policy_is_an_error_that_says_to_rephrase(
    settings: Settings, emulator: Emulator
) -> None:
    emulator.config.job_seconds = 0.05
    async with Client(build_server(settings)) as client:
        result = await client.call_tool(
            "generate_image", {"prompt": "something forbidden", "model": "fal-ai/flux/dev"}
        )
        assert result.is_error and "Rephrase" in text_of(result)
        job_id = result.structured_content["job_id"]
        status = await client.call_tool("check_status", {"job_id": job_id})
    assert not status.is_error and status.structured_content["status"] == "failed"


async def test_missing_key_and_locked_account(settings: Settings, emulator: Emulator) -> None:
    async with Client(build_server(settings.model_copy(update={"fal_key": None}))) as client:
        result = await client.call_tool("generate_image", {"prompt": "x"})
    assert result.is_error and "FAL_KEY" in text_of(result)
    emulator.config.locked = True
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("generate_image", {"prompt": "x"})
    assert result.is_error and "top up" in text_of(result)


async def test_unknown_job_id(settings: Settings) -> None:
    async with Client(build_server(settings)) as client:
        for tool in ("check_status", "cancel_job"):
            result = await client.call_tool(tool, {"job_id": "nope"})
            assert result.is_error and "No job 'nope'" in text_of(result)


async def test_submit_check_and_cancel(settings: Settings, emulator: Emulator, mode: str) -> None:
    emulator.config.queue_depth = 50
    async with Client(build_server(settings), mode=mode) as client:
        submitted = await client.call_tool("submit_job", {"prompt": "x", "model": "fal-ai/flux/dev"})
        assert submitted.structured_content["status"] == "queued"
        assert submitted.structured_content["queue_position"] == 50
        assert any(str(b.uri).startswith("flux://jobs/") for b in blocks(submitted, "resource_link"))
        job_id = submitted.structured_content["job_id"]
        status = await client.call_tool("check_status", {"job_id": job_id, "include_logs": True})
        assert status.structured_content["status"] == "queued"
        cancelled = await client.call_tool("cancel_job", {"job_id": job_id})
        assert cancelled.structured_content["cancelled"] is True
        assert cancelled.structured_content["status"] == "cancelled"
        again = await client.call_tool("cancel_job", {"job_id": job_id})
        assert (
            again.structured_content["cancelled"] is False
            and "already" in again.structured_content["message"]
        )
    assert emulator.job(job_id).cancelled


async def test_jobs_survive_a_restart(settings: Settings, emulator: Emulator) -> None:
    emulator.config.job_seconds = 0.5
    async with Client(build_server(settings)) as client:
        submitted = await client.call_tool("submit_job", {"prompt": "a tree", "model": "fal-ai/flux/schnell"})
    job_id = submitted.structured_content["job_id"]
    async with Client(build_server(settings)) as client:
        done = await client.call_tool("check_status", {"job_id": job_id, "wait_seconds": 10})
        assert done.structured_content["status"] == "completed"
        resource = await client.read_resource(f"flux://jobs/{job_id}")
    assert json.loads(resource.contents[0].text)["status"] == "completed"


async def test_upload_file_from_allowed_dir_and_data(settings: Settings, emulator: Emulator) -> None:
    picture = settings.allowed_dirs[0] / "cat.png"
    picture.write_bytes(image_bytes())
    async with Client(build_server(settings)) as client:
        uploaded = await client.call_tool("upload_file", {"path": str(picture)})
        assert not uploaded.is_error, text_of(uploaded)
        assert uploaded.structured_content["content_type"] == "image/png"
        inline = await client.call_tool(
            "upload_file",
            {
                "data": "data:image/png;base64," + base64.b64encode(image_bytes()).decode(),
                "file_name": "a.png",
            },
        )
        assert not inline.is_error, text_of(inline)
        outside = await client.call_tool("upload_file", {"path": "/etc/hostname"})
        assert outside.is_error and "allowed" in text_of(outside)
        both = await client.call_tool("upload_file", {})
        assert both.is_error and "exactly one of path" in text_of(both)


async def test_a_local_image_path_is_uploaded_for_kontext(settings: Settings, emulator: Emulator) -> None:
    emulator.config.job_seconds = 0.05
    picture = settings.allowed_dirs[0] / "room.png"
    picture.write_bytes(image_bytes())
    async with Client(build_server(settings)) as client:
        result = await client.call_tool(
            "generate_image",
            {"prompt": "make it night", "model": "fal-ai/flux-pro/kontext", "image_url": str(picture)},
        )
    assert not result.is_error, text_of(result)
    assert emulator.counters["upload"] == 1
    (job,) = emulator.jobs()
    assert job.input["image_url"].startswith(emulator.url)


async def test_resources_serve_jobs_and_images(settings: Settings, emulator: Emulator, mode: str) -> None:
    emulator.config.job_seconds = 0.05
    async with Client(build_server(settings), mode=mode) as client:
        result = await client.call_tool("generate_image", {"prompt": "x", "model": "fal-ai/flux/schnell"})
        job_id = result.structured_content["job_id"]
        image = await client.read_resource(f"flux://images/{job_id}/0")
        listed = await client.list_resources()
        templates = await client.list_resource_templates()
    blob = image.contents[0]
    assert blob.mime_type == "image/jpeg"
    assert base64.b64decode(blob.blob) == Path(result.structured_content["images"][0]["path"]).read_bytes()
    assert f"flux://images/{job_id}/0" in [str(r.uri) for r in listed.resources]
    assert {t.uri_template for t in templates.resource_templates} == {
        "flux://jobs/{job_id}",
        "flux://images/{job_id}/{index}",
    }


async def test_list_models(settings: Settings) -> None:
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("list_models", {})
    models = {m["id"]: m for m in result.structured_content["models"]}
    assert set(models) == set(MODELS)
    assert models["fal-ai/flux-pro/kontext"]["requires_image"] is True
    assert "aspect_ratio" in models["fal-ai/flux-pro/v1.1-ultra"]["parameters"]


async def test_a_root_the_client_shares_is_an_allowed_directory(settings: Settings, tmp_path: Path) -> None:
    shared = tmp_path / "shared-by-client"
    shared.mkdir()
    (shared / "photo.png").write_bytes(image_bytes())

    async def roots(context: object) -> ListRootsResult:
        return ListRootsResult(roots=[Root(uri=shared.as_uri(), name="project")])

    async with Client(build_server(settings), mode="legacy", list_roots_callback=roots) as client:
        shared_file = await client.call_tool("upload_file", {"path": str(shared / "photo.png")})
    assert not shared_file.is_error, text_of(shared_file)
    async with Client(build_server(settings), mode="legacy") as client:
        unshared = await client.call_tool("upload_file", {"path": str(shared / "photo.png")})
    assert unshared.is_error and "outside the allowed directories" in text_of(unshared)


async def test_finished_jobs_are_announced_to_listening_clients(
    settings: Settings, emulator: Emulator
) -> None:
    emulator.config.job_seconds = 0.05
    async with Client(build_server(settings)) as client:
        async with client.listen(resources_list_changed=True) as events:
            result = await client.call_tool("generate_image", {"prompt": "x", "model": "fal-ai/flux/schnell"})
            with anyio.fail_after(5):
                event = await anext(aiter(events))
        assert isinstance(event, ResourcesListChanged)
        listed = await client.list_resources()
    assert f"flux://images/{result.structured_content['job_id']}/0" in [str(r.uri) for r in listed.resources]


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ("429", "Wait a little and try again"),
        ("503_fal", "looked up in fal's request history"),
        ("drop", "Do not submit it again"),
    ],
)
async def test_fal_trouble_at_submit_is_an_error_that_says_what_to_do(
    settings: Settings, emulator: Emulator, fault: str, expected: str
) -> None:
    emulator.inject("submit", fault, count=20)
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("generate_image", {"prompt": "x", "model": "fal-ai/flux/schnell"})
    assert result.is_error and expected in text_of(result)


async def test_losing_fal_while_waiting_still_returns_the_job_id(
    settings: Settings, emulator: Emulator
) -> None:
    emulator.config.job_seconds = 0.5
    emulator.inject("stream", "500", count=20)
    emulator.inject("status", "500", count=20)
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("generate_image", {"prompt": "x", "model": "fal-ai/flux/schnell"})
        assert not result.is_error
        job_id = result.structured_content["job_id"]
        assert "Lost contact with fal" in result.structured_content["message"]
        emulator.clear_faults()
        with anyio.fail_after(10):
            while (
                done := await client.call_tool("check_status", {"job_id": job_id, "wait_seconds": 5})
            ).structured_content["status"] != "completed":
                pass
    assert done.structured_content["images"]


async def test_a_running_job_fal_cannot_stop_still_delivers_its_images(
    settings: Settings, emulator: Emulator
) -> None:
    emulator.config.job_seconds = 0.5
    emulator.config.cancel_in_progress_honoured = False
    async with Client(build_server(settings)) as client:
        submitted = await client.call_tool("submit_job", {"prompt": "x", "model": "fal-ai/flux/schnell"})
        job_id = submitted.structured_content["job_id"]
        with anyio.fail_after(5):
            while not emulator.job(job_id).started:
                await anyio.sleep(0.01)
        cancelled = await client.call_tool("cancel_job", {"job_id": job_id})
        assert cancelled.structured_content["status"] == "in_progress"
        assert "asked to stop it" in cancelled.structured_content["message"]
        done = await client.call_tool("check_status", {"job_id": job_id, "wait_seconds": 10})
    assert done.structured_content["status"] == "completed" and done.structured_content["images"]
