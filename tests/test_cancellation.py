"""Cancelling: what cancel_job says is what happened, and a client that gives up never wastes a paid job.

Agent frameworks cancel slow tool calls on their own (openai-agents after 5 s by default). A job still
queued costs nothing and is cancelled on fal; a job already running is paid for, so it is kept,
followed, and its images saved.
"""

from __future__ import annotations

import logging
from pathlib import Path

import anyio
import pytest
from mcp import Client
from mcp.types import CallToolResult

from fal_flux_mcp.emulator import Emulator
from fal_flux_mcp.server import build_server
from fal_flux_mcp.settings import Settings

pytestmark = pytest.mark.anyio

SCHNELL = {"prompt": "a fox in the snow", "model": "fal-ai/flux/schnell"}


async def _until(condition: object, seconds: float = 10) -> None:
    with anyio.fail_after(seconds):
        while not condition():  # type: ignore[operator]
            await anyio.sleep(0.01)


async def _call_then_give_up(client: Client, emulator: Emulator, *, once_started: bool) -> None:
    """Call generate_image and cancel the call once fal has the job (queued, or running if asked)."""
    async with anyio.create_task_group() as group:
        group.start_soon(client.call_tool, "generate_image", SCHNELL)
        await _until(lambda: emulator.jobs() and (emulator.jobs()[0].started or not once_started))
        group.cancel_scope.cancel()


async def test_a_client_that_gives_up_on_a_queued_job_cancels_it_on_fal(
    settings: Settings, emulator: Emulator
) -> None:
    emulator.config.queue_depth = 50
    async with Client(build_server(settings)) as client:
        await _call_then_give_up(client, emulator, once_started=False)
        await _until(lambda: emulator.jobs()[0].cancelled)
        (job,) = emulator.jobs()
        status = await client.call_tool("check_status", {"job_id": job.request_id, "wait_seconds": 5})
    assert not job.started
    assert status.structured_content["status"] == "cancelled"


async def test_a_client_that_gives_up_before_fal_answers_the_submit_still_cancels_the_queued_job(
    settings: Settings, emulator: Emulator
) -> None:
    """The race the test above can hit: fal has queued the job, its answer is still on the way."""
    emulator.config.queue_depth = 50
    emulator.inject("submit", "slow", count=1, delay=2)  # fal queues it, then holds the answer back
    async with Client(build_server(settings)) as client:
        await _call_then_give_up(client, emulator, once_started=False)
        await _until(lambda: emulator.jobs()[0].cancelled)
    assert not emulator.jobs()[0].started


async def test_a_client_that_gives_up_on_a_running_job_keeps_it_and_gets_its_images_saved(
    settings: Settings, emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    emulator.config.job_seconds = 1.0
    caplog.set_level(logging.INFO, logger="fal_flux_mcp.server")
    async with Client(build_server(settings)) as client:
        await _call_then_give_up(client, emulator, once_started=True)
        (job,) = emulator.jobs()
        done = await client.call_tool("check_status", {"job_id": job.request_id, "wait_seconds": 10})
    assert emulator.counters["cancel"] == 0 and not emulator.job(job.request_id).cancelled
    assert done.structured_content["status"] == "completed"
    (image,) = done.structured_content["images"]
    assert Path(image["path"]).is_file() and Path(image["path"]).parent == settings.output_dir
    assert any(
        job.request_id in r.getMessage() and "already running" in r.getMessage() and "kept" in r.getMessage()
        for r in caplog.records
    )


def _message(result: CallToolResult) -> str:
    assert not result.is_error
    return str(result.structured_content["message"])


async def test_cancel_job_says_a_queued_job_never_ran(settings: Settings, emulator: Emulator) -> None:
    emulator.config.queue_depth = 50
    async with Client(build_server(settings)) as client:
        job_id = (await client.call_tool("submit_job", SCHNELL)).structured_content["job_id"]
        message = _message(await client.call_tool("cancel_job", {"job_id": job_id}))
    assert "still queued" in message and "costs nothing" in message


async def test_cancel_job_on_a_running_job_does_not_claim_it_never_ran(
    settings: Settings, emulator: Emulator
) -> None:
    emulator.config.job_seconds = 5
    async with Client(build_server(settings)) as client:
        job_id = (await client.call_tool("submit_job", SCHNELL)).structured_content["job_id"]
        await _until(lambda: emulator.job(job_id).started)
        cancelled = await client.call_tool("cancel_job", {"job_id": job_id})
    message = _message(cancelled)
    assert cancelled.structured_content["status"] == "cancelled"
    assert "running" in message and "never" not in message and "may still bill" in message
