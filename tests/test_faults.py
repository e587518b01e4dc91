"""Never lose a paid job: fal's passing faults, injected into the emulator, cost the user nothing.

Each test injects the fault an outside test found (a 5xx on the result, a 502 on the download, a 429 on
the status stream…) and checks what the user would see: the job completes, its images are saved once.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from mcp import Client

from fal_flux_mcp.emulator import Emulator
from fal_flux_mcp.server import build_server
from fal_flux_mcp.settings import Settings

pytestmark = pytest.mark.anyio

SCHNELL = {"prompt": "a fox in the snow", "model": "fal-ai/flux/schnell"}


async def saved_images(folder: Path, seconds: float = 10) -> list[Path]:
    """The images saved in ``folder``, waiting (bounded) until there is at least one."""
    with anyio.fail_after(seconds):
        while not (folder.is_dir() and (found := sorted(folder.glob("*.jpg")))):
            await anyio.sleep(0.02)
    return found


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
