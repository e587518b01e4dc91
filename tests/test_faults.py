"""Never lose a paid job: fal's passing faults, injected into the emulator, cost the user nothing.

Each test injects the fault an outside test found (a 5xx on the result, a 502 on the download, a 429 on
the status stream…) and checks what the user would see: the job completes, its images are saved once.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import Client

from fal_flux_mcp.emulator import Emulator
from fal_flux_mcp.server import build_server
from fal_flux_mcp.settings import Settings
from tests.samples import saved_images

pytestmark = pytest.mark.anyio

SCHNELL = {"prompt": "a fox in the snow", "model": "fal-ai/flux/schnell"}


async def test_the_background_follower_survives_a_429_on_the_status_stream(
    settings: Settings, emulator: Emulator
) -> None:
    emulator.config.job_seconds = 0.3
    emulator.inject("stream", "429", count=1)
    async with Client(build_server(settings)) as client:
        await client.call_tool("submit_job", SCHNELL)
        (saved,) = await saved_images(settings.output_dir)  # nobody calls check_status
    assert saved.stat().st_size > 0


async def test_the_background_follower_outlasts_fal_failing_longer_than_the_retries(
    settings: Settings, emulator: Emulator
) -> None:
    emulator.config.job_seconds = 0.2
    emulator.inject("stream", "500", count=10)
    emulator.inject("status", "500", count=2 * settings.retry_attempts)  # two full rounds of retries
    async with Client(build_server(settings)) as client:
        await client.call_tool("submit_job", SCHNELL)
        (saved,) = await saved_images(settings.output_dir, seconds=15)
    assert saved.stat().st_size > 0


@pytest.mark.parametrize("fault", ["503_fal", "500"])
async def test_a_5xx_on_the_result_of_a_completed_job_is_not_a_failure(
    settings: Settings, emulator: Emulator, fault: str
) -> None:
    emulator.config.job_seconds = 0.05
    emulator.inject("result", fault, count=1)
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("generate_image", SCHNELL)
        assert not result.is_error, result.content
        again = await client.call_tool("check_status", {"job_id": result.structured_content["job_id"]})
    assert result.structured_content["status"] == again.structured_content["status"] == "completed"
    (image,) = result.structured_content["images"]
    assert Path(image["path"]).is_file()


async def test_a_job_fal_reports_failed_in_its_status_is_still_failed(
    settings: Settings, emulator: Emulator
) -> None:
    emulator.config.job_seconds = 0.05
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("generate_image", {**SCHNELL, "prompt": "runner-crash please"})
    assert result.is_error and result.structured_content["status"] == "failed"


@pytest.mark.parametrize("fault", ["502_nginx", "503_fal", "drop"])
async def test_a_download_that_fails_once_still_saves_the_image_at_once(
    settings: Settings, emulator: Emulator, fault: str
) -> None:
    emulator.config.job_seconds = 0.05
    emulator.inject("file", fault, count=1)
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("generate_image", SCHNELL)
    (image,) = result.structured_content["images"]
    assert image["save_state"] == "saved" and Path(image["path"]).is_file()


async def test_an_image_whose_download_keeps_failing_is_saved_once_fal_serves_it_again(
    settings: Settings, emulator: Emulator
) -> None:
    emulator.config.job_seconds = 0.05
    emulator.inject("file", "502_nginx", count=settings.retry_attempts)  # every retry of the first try
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("generate_image", SCHNELL)
        (image,) = result.structured_content["images"]
        assert image["save_state"] == "pending" and "download" in image["save_error"]
        (saved,) = await saved_images(settings.output_dir)  # the background retry, nobody asking
    assert saved.stat().st_size > 0


async def test_an_image_whose_url_is_gone_says_it_can_never_be_saved(
    settings: Settings, emulator: Emulator
) -> None:
    emulator.config.job_seconds = 0.05
    emulator.inject("file", "404", count=1)
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("generate_image", SCHNELL)
    (image,) = result.structured_content["images"]
    assert image["save_state"] == "gone" and image["path"] is None
    assert "can no longer be saved" in result.structured_content["message"]
