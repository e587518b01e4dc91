"""A submission whose answer is lost is found again in fal's request history, never sent twice.

fal may have queued (and will charge for) a job whose answer never reached the journal. Each test
loses the answer a different way against the emulator, which serves fal's request history, and checks
that the job is found and finished, or that the log says why it was dropped, or that the user is told
the submission is unconfirmed when the key may not read the history.
"""

from __future__ import annotations

import logging

import anyio
import pytest
from mcp import Client
from mcp.types import CallToolResult

from fal_flux_mcp.emulator import Emulator
from fal_flux_mcp.server import build_server
from fal_flux_mcp.settings import Settings

pytestmark = pytest.mark.anyio

SCHNELL = {"prompt": "a fox in the snow", "model": "fal-ai/flux/schnell"}


def text_of(result: CallToolResult) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


async def _completed(client: Client, job_id: str, seconds: float = 15) -> CallToolResult:
    with anyio.fail_after(seconds):
        while True:
            status = await client.call_tool("check_status", {"job_id": job_id, "wait_seconds": 2})
            if not status.is_error and status.structured_content["status"] == "completed":
                return status


@pytest.mark.parametrize("fault", ["drop", "500_after"])
async def test_a_job_whose_submit_answer_is_lost_is_found_followed_and_saved(
    settings: Settings, emulator: Emulator, fault: str
) -> None:
    emulator.config.job_seconds = 0.2
    emulator.inject("submit", fault, count=1)  # fal queues the job, then the answer is lost or a 500
    async with Client(build_server(settings)) as client:
        lost = await client.call_tool("generate_image", SCHNELL)
        assert lost.is_error
        assert "looked up in fal's request history" in text_of(lost) and "Do not submit it again" in text_of(
            lost
        )
        (job,) = emulator.jobs()
        done = await _completed(client, job.request_id)
    assert done.structured_content["images"][0]["path"]
    assert emulator.counters["submit"] == 1


async def test_a_submit_that_never_reached_fal_is_dropped_once_the_window_closes(
    settings: Settings, emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    settings.reconcile_window_seconds = 0.5
    caplog.set_level(logging.WARNING, logger="fal_flux_mcp.server")
    emulator.inject("submit", "drop_before", count=1)
    async with Client(build_server(settings)) as client:
        lost = await client.call_tool("generate_image", SCHNELL)
        assert lost.is_error and "looked up" in text_of(lost)
        with anyio.fail_after(10):
            while not any("never received it" in r.getMessage() for r in caplog.records):
                await anyio.sleep(0.05)
    assert emulator.jobs() == [] and emulator.counters["submit"] == 1


async def test_a_key_that_cannot_read_the_history_leaves_an_unconfirmed_submission(
    settings: Settings, emulator: Emulator
) -> None:
    emulator.config.job_seconds = 0.05
    emulator.config.history_permission = False
    emulator.inject("submit", "drop", count=1)
    async with Client(build_server(settings)) as client:
        await client.call_tool("generate_image", SCHNELL)
        (lost,) = emulator.jobs()
        with anyio.fail_after(10):
            while "unconfirmed" not in text_of(
                await client.call_tool("check_status", {"job_id": lost.request_id})
            ):
                await anyio.sleep(0.05)
        other = await client.call_tool("generate_image", {**SCHNELL, "prompt": "another fox"})
        status = await client.call_tool("check_status", {"job_id": other.structured_content["job_id"]})
    (unconfirmed,) = status.structured_content["unconfirmed_submissions"]
    assert unconfirmed["model"] == "fal-ai/flux/schnell" and unconfirmed["prompt"] == SCHNELL["prompt"]
    assert "Unconfirmed submission" in text_of(status)
