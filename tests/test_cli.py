"""The ``fal-flux-mcp`` commands a user types: the demo and the standalone emulator."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from fal_flux_mcp.emulator import DEFAULT_KEY
from fal_flux_mcp.fal import FalClient


def test_demo_makes_an_image_offline_and_says_where_it_is(tmp_path: Path) -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "fal_flux_mcp",
            "demo",
            "--output-dir",
            str(tmp_path),
            "--model",
            "fal-ai/flux/schnell",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert completed.returncode == 0, completed.stderr
    saved = re.search(r"saved to (\S+)", completed.stdout)
    assert saved, completed.stdout
    assert Path(saved.group(1)).is_file() and Path(saved.group(1)).parent == tmp_path
    assert "Submitted job" in completed.stdout and "status completed" in completed.stdout


@pytest.mark.anyio
async def test_the_emulator_command_serves_fal_on_the_given_port() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "fal_flux_mcp", "emulator", "--port", str(port), "--job-seconds", "0.05"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:  # bounded by the process: it prints its address once listening
            if str(port) in line:
                break
        else:
            pytest.fail("the emulator exited without listening")
        async with FalClient(DEFAULT_KEY, base_url=f"http://127.0.0.1:{port}") as client:
            handle = await client.submit("fal-ai/flux/schnell", {"prompt": "x"})
            output = await client.wait(handle)
        async with httpx.AsyncClient() as http:
            assert (await http.get(output.images[0].url)).headers["content-type"] == "image/jpeg"
    finally:
        process.terminate()
        process.wait(10)
