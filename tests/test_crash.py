"""A server killed (SIGKILL) between fal's answer to a submit and the journal write loses nothing.

The real server runs over stdio; the emulator holds its answer to the submit for three seconds, the
server is killed during the hold, and a new server on the same state folder must find the job in
fal's request history, finish it and save its image, once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fal_flux_mcp.emulator import Emulator
from tests.stdio_peer import StdioPeer


@pytest.fixture
def env(emulator: Emulator, tmp_path: Path) -> dict[str, str]:
    return {
        "FAL_KEY": emulator.key,
        "FLUX_MCP_FAL_URL": emulator.url,
        "FLUX_MCP_STATE_DIR": str(tmp_path / "state"),
        "FLUX_MCP_OUTPUT_DIR": str(tmp_path / "out"),
        "FLUX_MCP_RETRY_BASE_DELAY": "0.01",
    }


@pytest.fixture
def peers(env: dict[str, str], tmp_path: Path) -> Iterator[list[StdioPeer]]:
    """Servers started by a test; each is stopped at the end, whatever happened."""
    started: list[StdioPeer] = []
    try:
        yield started
    finally:
        for peer in started:
            peer.stop()


def _start(peers: list[StdioPeer], env: dict[str, str], tmp_path: Path) -> StdioPeer:
    peer = StdioPeer(env, tmp_path / "stderr.log")
    peers.append(peer)
    peer.initialize()
    return peer


def test_a_kill_while_fal_answers_the_submit_loses_no_job(
    emulator: Emulator, env: dict[str, str], peers: list[StdioPeer], tmp_path: Path
) -> None:
    emulator.config.job_seconds = 0.3
    emulator.inject("submit", "slow", count=1, delay=3)
    first = _start(peers, env, tmp_path)
    first.start_request(
        "submit",
        "tools/call",
        {"name": "submit_job", "arguments": {"prompt": "a fox", "model": "fal-ai/flux/schnell"}},
    )
    deadline = time.monotonic() + 10
    while not emulator.jobs():  # fal has queued it and is holding the answer
        assert time.monotonic() < deadline, "the submit never reached the emulator"
        time.sleep(0.01)
    first.kill()
    (job,) = emulator.jobs()

    second = _start(peers, env, tmp_path)
    deadline = time.monotonic() + 20
    for attempt in range(100):
        result = second.call_tool(
            f"status-{attempt}", "check_status", {"job_id": job.request_id, "wait_seconds": 2}
        )
        if not result.get("isError") and result["structuredContent"]["status"] == "completed":
            break
        assert time.monotonic() < deadline, result
    else:
        pytest.fail(f"the job never completed: {result}")
    (image,) = result["structuredContent"]["images"]
    assert Path(image["path"]).is_file()
    assert [p.name for p in (tmp_path / "out").iterdir()] == [Path(image["path"]).name]
    assert emulator.counters["submit"] == 1 and len(emulator.jobs()) == 1
