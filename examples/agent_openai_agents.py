"""openai-agents with fal-flux-mcp as an MCP server, and the one setting it needs: the call timeout.

openai-agents gives up on any MCP tool call after ``client_session_timeout_seconds``, **5 seconds by
default**, while ``generate_image`` waits up to ``FLUX_MCP_WAIT_SECONDS`` (45 s) for the image. Set the
timeout above that wait::

    MCPServerStdio(params, client_session_timeout_seconds=60)

With the default, a slow image comes back as a timeout error to the agent. Nothing is lost on the
server's side: a job still queued on fal is cancelled (it costs nothing), and a job already running is
kept, and its image is saved in the output folder when it completes.

Offline, this script starts the fal emulator, launches ``python -m fal_flux_mcp serve`` through
``agents.mcp.MCPServerStdio`` and calls ``generate_image`` through it, as the agent's tool call does.
No model or API key is needed for that; with one, hand the server to an agent::

    agent = Agent(name="artist", instructions="Make the images asked for.", mcp_servers=[server])
    result = await Runner.run(agent, "a watercolour of a heron at dawn")

Run it from the repository root (``pip install openai-agents``)::

    python examples/agent_openai_agents.py                        # timeout 60 s: the image comes back
    python examples/agent_openai_agents.py --timeout 1 --job-seconds 3   # the call times out, the image is still saved
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import anyio
from agents.mcp import MCPServerStdio

from fal_flux_mcp.emulator import Emulator, EmulatorConfig


async def run(emulator: Emulator, output_dir: Path, state_dir: Path, timeout: float, prompt: str) -> int:
    params = {
        "command": sys.executable,
        "args": ["-m", "fal_flux_mcp", "serve"],
        "env": {
            "FAL_KEY": emulator.key,
            "FLUX_MCP_FAL_URL": emulator.url,
            "FLUX_MCP_OUTPUT_DIR": str(output_dir),
            "FLUX_MCP_STATE_DIR": str(state_dir),
            "FLUX_MCP_LOG_LEVEL": "WARNING",
        },
    }
    async with MCPServerStdio(params, client_session_timeout_seconds=timeout, name="fal-flux-mcp") as server:
        tools = await server.list_tools()
        print(f"tools: {', '.join(tool.name for tool in tools)}")
        started = time.perf_counter()
        try:
            result = await server.call_tool(
                "generate_image", {"prompt": prompt, "model": "fal-ai/flux/schnell"}
            )
        except Exception as exc:  # what the agent would see: its call timed out
            print(f"the call failed after {time.perf_counter() - started:.1f} s: {type(exc).__name__}: {exc}")
            print("the job goes on in the server; waiting for its image to be saved...")
            with anyio.fail_after(60):
                while not any(output_dir.glob("*.jpg")):
                    await anyio.sleep(0.1)
            print(f"saved anyway: {next(output_dir.glob('*.jpg'))}")
            return 2
        data = result.structured_content or {}
        for image in data.get("images", []):
            print(f"saved to {image['path']}")
        return 0 if data.get("status") == "completed" else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--timeout", type=float, default=60, help="client_session_timeout_seconds (default 60)"
    )
    parser.add_argument("--job-seconds", type=float, default=1.0, help="how long the emulated job runs")
    parser.add_argument("--prompt", default="a watercolour of a heron at dawn")
    parser.add_argument("--output-dir", type=Path, default=Path("fal-flux-mcp-output"))
    args = parser.parse_args()
    output_dir = args.output_dir.resolve()
    with (
        tempfile.TemporaryDirectory() as state,
        Emulator(EmulatorConfig(job_seconds=args.job_seconds)) as emulator,
    ):
        return anyio.run(run, emulator, output_dir, Path(state), args.timeout, args.prompt)


if __name__ == "__main__":
    sys.exit(main())
